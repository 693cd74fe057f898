"""LeftAtriumSegLib: left-atrium segmentation of 3D cardiac MRI, without Slicer.

Stages (one module each): ``io`` (read, check, write), ``preprocessing`` (model frame,
intensity normalisation), ``network`` (2.5D U-Net, PyTorch), ``model_file`` (safetensors model
files), ``models`` (the model catalogue and its download cache), ``onnx_network`` (the model
file's networks on ONNX Runtime), ``inference`` (probability map on the input grid and its
reliability), ``postprocessing`` (mask cleanup), ``quality`` (the quality flag), ``measurements``
(volume, BSA, LAVI), ``pipeline`` (one image to mask, volume and flag), ``batch`` (``segment``'s
cohort stage and its tables), ``metrics`` and ``evaluation`` (Dice, HD95, agreement),
``report`` (pictures and pages), ``datasets`` (the development data sets), ``training`` (a
package, by stage), ``model_card``, ``dependencies`` (the Slicer module's packages) and ``cli``
(argument parsing only). docs/design.md describes them.
"""

__version__ = "0.19.0"
