"""Hugging Face BERT checkpoints <-> jaxbert, with no PyTorch and no pickle.

`import_hf` (hf/importer.py) reads a Hugging Face BERT folder (`config.json`,
`model.safetensors`, `tokenizer.json`/`vocab.txt`) through safetensors' numpy API and
writes a jaxbert bundle (see jaxbert/checkpoint.py). `export_hf` (hf/exporter.py)
writes a bundle or a training run back as a folder `transformers` loads. jaxbert's
parameter names mirror Hugging Face's, so the conversion is one table of (HF name, Flax
path, shape, transposed?) built from the model config (hf/names.py).
"""

from jaxbert.hf.exporter import ExportReport, export_hf
from jaxbert.hf.importer import ImportReport, import_hf

__all__ = ["ExportReport", "ImportReport", "export_hf", "import_hf"]
