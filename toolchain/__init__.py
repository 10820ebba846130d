"""edgekit: turn a trained model into TFLite, ONNX and OpenVINO artifacts, and measure them.

Importing `edgekit` is cheap (numpy only); the converters load when a conversion starts.

    import edgekit
    report = edgekit.convert("model.keras", target="cpu", data="val.npz")
"""
__version__ = "0.1.0"


def convert(*args, **kwargs):
    from .pipeline import convert as _convert
    return _convert(*args, **kwargs)


def bench(*args, **kwargs):
    from .runner import bench as _bench
    return _bench(*args, **kwargs)
