"""cocoa-lens: study why CoCoA-style multimodal embedding models work."""

__version__ = "0.1.0"
