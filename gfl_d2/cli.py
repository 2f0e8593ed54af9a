"""
The command line of the tools (demo, export, analysis): ``--config-file``
(default: the embedded config) and trailing ``key=value`` overrides, loaded
and checked as the training entry point loads them.
"""

import argparse

from .lazy_config import load_lazy_config
from .model_zoo import DEFAULT_CONFIG

__all__ = ["config_argument_parser", "parse_with_overrides", "setup_config"]


def config_argument_parser(
    description: str, config_required: bool = False
) -> argparse.ArgumentParser:
    """
    A tool's argument parser with ``--config-file`` (default: the embedded config); see
    :func:`parse_with_overrides`.
    """
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if config_required:
        p.add_argument("--config-file", required=True, metavar="FILE")
    else:
        p.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    return p


def parse_with_overrides(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, with trailing ``key=value`` config overrides collected in ``args.opts``."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace):
    """
    detectron2's logger, and the LazyConfig of ``args.config_file`` with ``args.opts`` applied
    (checked).
    """
    from detectron2.utils.logger import setup_logger

    setup_logger(name="detectron2")
    setup_logger(name="gfl_d2")
    return load_lazy_config(args.config_file, args.opts)
