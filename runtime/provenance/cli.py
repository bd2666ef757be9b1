"""CLI commands `mark`, `verify` and `provenance init`. Imported lazily by instantid_edge.cli."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import ConfigError, InstantIDError

sign_option = click.option(
    "--sign",
    "sign_dir",
    type=click.Path(path_type=Path),
    help="Sign with C2PA using this folder from `provenance init` (default: $INSTANTID_EDGE_SIGNER; unset: unsigned).",
)
key_option = click.option(
    "--key", help="Watermark key (default: $INSTANTID_EDGE_WATERMARK_KEY, else the public instantid-edge key)."
)


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@sign_option
@key_option
def mark(source, out, sign_dir, key):
    """Watermark any image and label it AI-generated (for post-processed outputs, or to try the watermark).

    \b
    OUT's suffix picks the format: .png, .jpg/.jpeg or .webp. An image that already carries the watermark is
    labelled but not marked again (twice the pattern would be twice as visible).
    Example:
      instantid-edge mark edited.png edited-marked.jpg
    """
    from ..images import load_rgb
    from .credentials import configured_signer
    from .label import image_format
    from .output import watermark_key, write_output
    from .watermark import detect

    image_format(out)  # an unsupported suffix fails before any work
    signer = configured_signer(sign_dir)
    rgb = load_rgb(source)
    already = detect(rgb, watermark_key(key)).detected
    write_output(out, rgb, {"generator": "mark", "source": source.name}, watermarked=already, signer=signer, key=key)
    done = ["XMP label"] + (["C2PA manifest"] if signer else [])
    done.insert(0, "watermark (already present)" if already else "watermark")
    click.echo(f"wrote {out}: {', '.join(done)}", err=True)


class _VerifyCommand(click.Command):
    """Bad arguments exit with 1 like other errors: `verify` keeps 2 for "an image without the watermark"."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = 1
            raise


def _read_trust(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the trust anchor {path}: {exc}") from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"{path} holds no PEM certificate; pass the CA's ca.pem from `provenance init`")
    return text


@click.command(cls=_VerifyCommand)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image, in a list.")
@click.option("--trust", type=click.Path(path_type=Path), help="CA certificate (PEM) whose signers count as trusted.")
@key_option
def verify(images, as_json, trust, key):
    """Report each image's watermark (score, payload), XMP/IPTC label and C2PA state.

    \b
    C2PA states: absent, valid (signature intact, signer not in --trust), trusted, tampered. Without the sign
    extra the state is only "present" or "absent".
    Exit status: 0 when every image carries the watermark, 2 when any does not, 1 on errors (unreadable file,
    bad arguments).
    Example:
      instantid-edge verify portrait.png shared-copy.jpg --trust provenance/ca.pem
    """
    from .verify import verify_file

    trust_pem = _read_trust(trust)
    results, errors, unmarked = [], 0, 0
    for path in images:
        try:
            report = verify_file(path, trust_pem, key)
        except InstantIDError as exc:
            errors += 1
            results.append({"path": str(path), "error": str(exc)})
            if not as_json:
                click.echo(f"Error: {exc}", err=True)
            continue
        unmarked += not report.watermark.detected
        results.append(report.to_dict())
        if not as_json:
            click.echo(report.summary())
    if as_json:
        click.echo(json.dumps(results, indent=2))
    sys.exit(1 if errors else 2 if unmarked else 0)


@click.group()
def provenance():
    """Set up C2PA signing: a local certificate authority and a signing certificate."""


@provenance.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--organisation", default="instantid-edge operator", show_default=True, help="Name in the certificates.")
@click.option("--days", type=click.IntRange(1, 3650), default=825, show_default=True, help="Signer validity.")
def init(folder, organisation, days):
    """Make FOLDER with a CA (ca.pem, ca.key) and a signer it issued (signer.pem, signer.key).

    \b
    Example:
      instantid-edge provenance init ~/instantid-signing --organisation "Photo booth, Main St."
    Keep ca.key offline; give ca.pem to whoever verifies. Then sign every output with:
      export INSTANTID_EDGE_SIGNER=FOLDER      (or --sign FOLDER on generate and mark)
    and verify with:
      instantid-edge verify --trust FOLDER/ca.pem IMAGE
    """
    from .certs import make_authority

    authority = make_authority(folder, organisation, days)
    click.echo(f"wrote {authority.folder}: ca.pem, ca.key (keep offline), signer.pem (chain), signer.key", err=True)
    click.echo(f"sign outputs:   export INSTANTID_EDGE_SIGNER={authority.folder}", err=True)
    click.echo(f"verify outputs: instantid-edge verify --trust {authority.ca_cert} IMAGE", err=True)
