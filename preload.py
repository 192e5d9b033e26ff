"""Command-line flags of the extension; stable-diffusion-webui calls preload(parser) before parsing."""

from __future__ import annotations


def preload(parser) -> None:
    parser.add_argument(
        "--supir-models-path",
        type=str,
        default=None,
        help="folder holding the SUPIR model files (SUPIR-v0Q / SUPIR-v0F); default: SUPIR in the webui's "
        "models folder (models/SUPIR)",
    )
