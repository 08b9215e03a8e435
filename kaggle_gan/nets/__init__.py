"""The networks: the course's DCGAN pair and the SN-ResNet pair (``models``), the conditional pair for a
class or a set of objects (``conditional``), the layer helpers both use (``layers``)."""
