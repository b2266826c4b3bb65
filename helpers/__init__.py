"""Helpers of the fine-tuning notebook, one subpackage per pipeline stage (docs/layout.md).

Imports point one way: runtime < families < data < offline < evaluate < train < parameters, run_notebook.
"""
