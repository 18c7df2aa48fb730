"""cfclassify: tag folders of images with Cloudflare Workers AI's resnet-50, within a neuron budget."""

__version__ = "0.1.0"
