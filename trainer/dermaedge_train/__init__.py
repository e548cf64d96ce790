"""dermaedge_train: trains and exports the dermaedge lesion segmenter and classifier."""

__version__ = "0.2.0"
