"""Capture, the Graph IR, locality rules and (de)serialisation."""

from .capture import capture
from .ir import Graph, Node, Ref, TensorMeta
from .locality import Dep, Locality, analyse

__all__ = ["capture", "analyse", "Graph", "Node", "Ref", "TensorMeta", "Dep", "Locality"]
