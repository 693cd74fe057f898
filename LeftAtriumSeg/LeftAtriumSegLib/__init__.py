"""LeftAtriumSegLib: left-atrium segmentation of 3D cardiac MRI, without Slicer.

Stages (one module each): ``io`` (read, validate, write), ``preprocessing`` (model frame,
intensity normalisation), ``network`` (2.5D U-Net, PyTorch), ``model_file`` (safetensors model
files), ``onnx_network`` (the model file's networks on ONNX Runtime, for inference without
PyTorch), ``inference`` (probability map on the input grid), ``postprocessing`` (mask cleanup),
``measurements`` (volume, BSA, LAVI), ``metrics`` (Dice, HD95, ASSD), ``evaluation``,
``training``, ``model_card`` and ``cli``.
"""

__version__ = "0.11.0"
