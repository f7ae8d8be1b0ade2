"""mic_det: Masked Image Consistency for domain-adaptive detection on Detectron2.

Detectron2 is deliberately *not* listed by distribution name: it is installed
either as the pinned wheel from requirements.txt (``make``) or built from
source by the user, and both provide the ``detectron2`` import.
"""
from setuptools import find_packages, setup

setup(
    name="mic_det",
    version="0.1.0",
    description="Masked Image Consistency (MIC) for unsupervised domain adaptation on Detectron2",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["mic_det", "mic_det.*"]),
    install_requires=["numpy", "opencv-python-headless", "pycocotools", "fvcore", "iopath", "matplotlib"],
    extras_require={"test": ["pytest", "pytest-xdist"]},
)
