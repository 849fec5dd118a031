"""``quicflow secrets``: encrypt, decrypt, edit and set credentials files; rotate keys.

Secret values are read only from hidden prompts, files or standard input, never from
the command line (argv is visible to every user of the machine and kept in shell
history).  Age recipients come from ``--age`` or ``SOPS_AGE_RECIPIENTS``; identities
from ``SOPS_AGE_KEY_FILE`` / ``SOPS_AGE_KEY`` as sops reads them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from reconciler import errors
from reconciler.credential import age, documents, model, sealing, sops
from reconciler.store.database import Database

DATA_DIR_ENV = "QUIC_FLOW_DATA_DIR"


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _recipients(given: tuple[str, ...]) -> list[str]:
    recipients = [r.strip() for item in given for r in item.split(",") if r.strip()]
    if not recipients:
        env = os.environ.get("SOPS_AGE_RECIPIENTS", "")
        recipients = [r.strip() for r in env.split(",") if r.strip()]
    return recipients


def _rules(path: Path, encrypted_regex: str | None) -> sops.EncryptionRules:
    if encrypted_regex is not None:
        return sops.EncryptionRules(encrypted_regex=encrypted_regex)
    # Credentials files keep names, types and descriptions readable by default.
    if path.name == documents.CREDENTIALS_FILE:
        return documents.RULES
    return sops.EncryptionRules()


def _write_atomically(path: Path, text: str) -> None:
    # Write beside the target and rename, so a crash never leaves half a file in Git.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _decrypt(path: Path) -> sops.Decrypted:
    # Always native: editing keeps the data key and IVs, which only the native path has.
    tree = sops.load_yaml(path.read_text(), str(path))
    return sops.decrypt_tree(tree, age.identities_from_env(), source=str(path))


def _backend(native: bool) -> str:
    return "native" if native else "auto"


@click.group("secrets")
def secrets_group() -> None:
    """Encrypted credentials files (SOPS with age) and the sealed credential store."""


@secrets_group.command("encrypt")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--age", "age_recipients", multiple=True, help="age recipient(s), comma separated.")
@click.option("--encrypted-regex", default=None, help="Encrypt only keys matching this regex.")
@click.option("--stdout", is_flag=True, help="Print instead of rewriting FILE.")
@click.option("--native", is_flag=True, help="Do not use the sops binary even if present.")
def encrypt_command(
    file: Path,
    age_recipients: tuple[str, ...],
    encrypted_regex: str | None,
    stdout: bool,
    native: bool,
) -> None:
    """Encrypt a plain YAML FILE in place for the age recipients."""
    recipients = _recipients(age_recipients)
    if not recipients:
        raise click.UsageError("give --age RECIPIENT or set SOPS_AGE_RECIPIENTS")
    try:
        text = sops.encrypt_text(
            file.read_text(),
            recipients,
            _rules(file, encrypted_regex),
            source=str(file),
            backend=_backend(native),
        )
    except errors.CredentialError as exc:
        raise _fail(exc) from None
    if stdout:
        click.echo(text, nl=False)
    else:
        _write_atomically(file, text)
        click.echo(f"encrypted {file} for {len(recipients)} recipient(s)", err=True)


@secrets_group.command("decrypt")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--in-place", is_flag=True, help="Rewrite FILE decrypted (do not commit it!).")
@click.option("--native", is_flag=True, help="Do not use the sops binary even if present.")
def decrypt_command(file: Path, in_place: bool, native: bool) -> None:
    """Decrypt FILE (MAC checked) and print it."""
    try:
        data = sops.decrypt_text(file.read_text(), source=str(file), backend=_backend(native))
    except errors.CredentialError as exc:
        raise _fail(exc) from None
    text = sops.dump_yaml(data)
    if in_place:
        _write_atomically(file, text)
    else:
        click.echo(text, nl=False)


def _edit_text(text: str) -> str:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    # A private directory: the plaintext must not be readable by other users.
    with tempfile.TemporaryDirectory(prefix="quicflow-edit-") as directory:
        os.chmod(directory, 0o700)
        path = Path(directory) / "credentials.yaml"
        path.write_text(text)
        os.chmod(path, 0o600)
        result = subprocess.run([*shlex.split(editor), str(path)], check=False)
        if result.returncode != 0:
            raise click.ClickException(f"editor exited with {result.returncode}; nothing saved")
        return path.read_text()


def _reencrypt(
    file: Path, decrypted: sops.Decrypted | None, data: dict[str, Any], recipients: list[str]
) -> None:
    if decrypted is not None:
        tree = sops.encrypt_tree(data, source=str(file), reuse=decrypted)
    else:
        tree = sops.encrypt_tree(data, recipients, _rules(file, None), source=str(file))
    _write_atomically(file, sops.dump_yaml(tree))


@secrets_group.command("edit")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--age", "age_recipients", multiple=True, help="Recipients for a new file.")
def edit_command(file: Path, age_recipients: tuple[str, ...]) -> None:
    """Open FILE decrypted in $EDITOR and save it encrypted (a new file is created)."""
    try:
        decrypted = _decrypt(file) if file.exists() else None
        recipients = _recipients(age_recipients)
        if decrypted is None and not recipients:
            raise click.UsageError("a new file needs --age RECIPIENT or SOPS_AGE_RECIPIENTS")
        before = sops.dump_yaml(decrypted.data) if decrypted else "credentials: {}\n"
        after = _edit_text(before)
        if after == before:
            click.echo("no changes", err=True)
            return
        data = sops.load_yaml(after, str(file))
        _reencrypt(file, decrypted, data, recipients)
    except errors.CredentialError as exc:
        raise _fail(exc) from None
    click.echo(f"saved {file}", err=True)


def _read_file_option(path: Path | None) -> str | None:
    return path.read_text() if path is not None else None


@secrets_group.command("set")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("name")
@click.option(
    "--type",
    "kind",
    required=True,
    type=click.Choice([t.value for t in model.CredentialType]),
    help="Credential type.",
)
@click.option("--description", default=None, help="Readable description (kept in clear).")
@click.option(
    "--private-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ssh_key: read the private key from this file.",
)
@click.option(
    "--known-hosts-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ssh_key: read the known_hosts entry from this file.",
)
@click.option("--age", "age_recipients", multiple=True, help="Recipients for a new file.")
@click.option("--created-by", default=lambda: os.environ.get("USER", ""), show_default="$USER")
def set_command(
    file: Path,
    name: str,
    kind: str,
    description: str | None,
    private_key_file: Path | None,
    known_hosts_file: Path | None,
    age_recipients: tuple[str, ...],
    created_by: str,
) -> None:
    """Add or replace credential NAME in FILE; values are prompted for, hidden."""
    ctype = model.CredentialType(kind)
    values: dict[str, str] = {}
    if ctype is model.CredentialType.USERNAME_PASSWORD:
        values["username"] = click.prompt("username")
        values["password"] = click.prompt("password", hide_input=True, confirmation_prompt=True)
    elif ctype is model.CredentialType.ACCESS_TOKEN:
        values["token"] = click.prompt("token", hide_input=True)
    else:
        key = _read_file_option(private_key_file)
        if key is None:
            raise click.UsageError("ssh_key needs --private-key-file PATH")
        values["private_key"] = key
        passphrase = click.prompt(
            "passphrase (empty for none)", hide_input=True, default="", show_default=False
        )
        if passphrase:
            values["passphrase"] = passphrase
        hosts = _read_file_option(known_hosts_file)
        if hosts:
            values["known_hosts"] = hosts
    try:
        decrypted = _decrypt(file) if file.exists() else None
        recipients = _recipients(age_recipients)
        if decrypted is None and not recipients:
            raise click.UsageError("a new file needs --age RECIPIENT or SOPS_AGE_RECIPIENTS")
        data = documents.set_credential(
            decrypted.data if decrypted else {},
            name,
            ctype,
            values,
            description=description,
            created_by=created_by,
            created_at=sops.format_lastmodified(datetime.now(UTC)),
        )
        _reencrypt(file, decrypted, data, recipients)
    except errors.CredentialError as exc:
        raise _fail(exc) from None
    click.echo(f"set {ctype} credential {name} in {file}", err=True)


@secrets_group.command("rotate")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get(DATA_DIR_ENV),
    help=f"Default: ${DATA_DIR_ENV}.",
)
@click.option("--add-age", multiple=True, help="Add a recipient while rotating FILES.")
@click.option("--rm-age", multiple=True, help="Remove a recipient while rotating FILES.")
def rotate_command(
    files: tuple[Path, ...],
    data_dir: Path | None,
    add_age: tuple[str, ...],
    rm_age: tuple[str, ...],
) -> None:
    """Rotate the data key of each FILE, or re-seal the sealed store under the current key.

    For the store, set QUIC_FLOW_SECRET_KEY to the new key and
    QUIC_FLOW_SECRET_KEY_PREVIOUS to the old one.
    """
    try:
        if files:
            for file in files:
                tree = sops.rotate_data_key(
                    _decrypt(file),
                    add_recipients=_recipients(add_age) if add_age else (),
                    remove_recipients=[r for item in rm_age for r in item.split(",")],
                )
                _write_atomically(file, sops.dump_yaml(tree))
                click.echo(f"rotated data key of {file}", err=True)
            return
        if data_dir is None:
            raise click.UsageError(f"give FILES, or --data-dir / ${DATA_DIR_ENV} for the store")
        database = Database.open(data_dir)
        try:
            store = sealing.SealedStore(database, sealing.SealingKeys.from_env())
            count = store.start()
            click.echo(
                f"sealed store {database.location}: all records under key id "
                f"{store.keys.current_id} ({count} re-sealed now)",
                err=True,
            )
        finally:
            database.close()
    except errors.CredentialError as exc:
        raise _fail(exc) from None
