"""Interactive Knowledge Distillation: a student trained inside hybrids with its frozen teacher."""

__version__ = "0.1.0"
