"""torch.hub entry points of mgid.

    >>> import torch
    >>> net = torch.hub.load("/path/to/mgid", "mgid", source="local")  # a clone; no network needed
    >>> out = net(image)  # image (B, 3, H, W) float in [-1, 1] -> out.background, out.rain (B, 3, H, W)
"""
dependencies = ["torch", "numpy", "safetensors", "cv2", "psutil"]


def mgid(pretrained: bool = True):
    """The MGID de-raining network (`mgid.models.MGIDNet`, an ``nn.Module``) in eval mode on the CPU.

    Args:
        pretrained: True (default): the shipped weights (``mgid/weights/mgid_embedded.safetensors`` and the
            network of its record ``mgid_embedded.json``), verified as `mgid.load_model` does. False: the same
            architecture, randomly initialised.

    Returns:
        The network. ``net(image)`` with ``image`` (B, 3, H, W) float in [-1, 1] (RGB, any H and W) returns an
        `mgid.models.MGIDOutput`: ``background`` (the de-rained image) and ``rain`` (the removed layer),
        both (B, 3, H, W), ``background + rain == image``.

    Raises:
        FileNotFoundError: the shipped weights are missing from this copy of mgid.
        mgid.checkpoint.CheckpointError: they are truncated or do not match their record.
    """
    from mgid.derain.derainer import load_network, resolve_weights
    from mgid.models import MGIDNet

    net = load_network(resolve_weights(None), "cpu")
    return net if pretrained else MGIDNet(net.config).eval()
