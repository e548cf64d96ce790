"""dermaedge_train: trains and exports the dermaedge lesion segmenter and classifier."""

__version__ = "0.1.0"
