"""``securepacs user add|list|disable|enable|reset-password|unlock|reset-totp``: accounts, by an admin.

Passwords never appear on the command line (other users would see them in ``ps``): they are read from a
file (``-`` for standard input) or generated and printed once. The store is opened like ``securepacs
clinic`` does; the running plugin sees the changes at once (it reads accounts on every request).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

from securepacs.access import user_admin
from securepacs.access.principal import USER_ROLES
from securepacs.access.user_admin import AccountError
from securepacs.audit import codes
from securepacs.cli.audit_cmd import os_account, record_change
from securepacs.cli.pki_cmd import guarded, open_store
from securepacs.config import environment as settings_mod
from securepacs.store.database import Store


def _actor() -> str:
    """Who ran the command, for the log."""
    account, sudo = os_account()
    return account + (f" (sudo by {sudo})" if sudo else "")


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Account refusals as one ``securepacs: error: ...`` line and exit status 2, like store/PKI errors."""
    return guarded(run, (AccountError,))


class _RefusePasswordArgument(argparse.Action):
    """``--password VALUE`` is refused outright (without repeating the value): it would be visible in ``ps``
    and the shell history. Declared so that it is not taken as an abbreviation of ``--password-file``."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        parser.error("passwords are not accepted on the command line (other users see them in `ps`): "
                     "use --password-file FILE, or --password-file - to read standard input")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    user = subparsers.add_parser("user", help="add, list, disable, enable and reset user accounts",
                                 description="User accounts of the archive's web/REST interface.")
    ops = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    p = ops.add_parser("add", help="create an account (the password is generated unless --password-file)",
                       allow_abbrev=False)
    p.add_argument("name", metavar="NAME", help="user name: letters, digits, '.', '_', '@', '-' (max 64)")
    p.add_argument("--role", required=True, choices=USER_ROLES, help="admin, physician, clinic-device or auditor")
    p.add_argument("--clinic", metavar="CLINIC", help="the clinic a physician or clinic-device acts for")
    _password_file_argument(p)
    p.set_defaults(func=_guarded(_add))

    p = ops.add_parser("list", help="table of accounts: role, clinic, status, second factor, creation date")
    p.add_argument("--clinic", metavar="CLINIC", help="only the accounts of this clinic")
    p.set_defaults(func=_guarded(_list))

    for action, text in (("disable", "disable an account and end its sessions"), ("enable", "enable an account"),
                         ("unlock", "clear a lockout after repeated failed logins"),
                         ("reset-totp", "remove an account's second factor (lost device)")):
        p = ops.add_parser(action, help=text)
        p.add_argument("name", metavar="NAME")
        p.set_defaults(func=_guarded(functools.partial(_simple, action)))

    p = ops.add_parser("reset-password", help="set a new password (generated unless --password-file); "
                                              "ends the account's sessions and clears a lockout",
                       allow_abbrev=False)
    p.add_argument("name", metavar="NAME")
    _password_file_argument(p)
    p.set_defaults(func=_guarded(_reset_password))


def _password_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-file", metavar="FILE",
                        help="read the password from FILE ('-': standard input); one trailing newline is ignored")
    parser.add_argument("--password", action=_RefusePasswordArgument, help=argparse.SUPPRESS)


def read_password(source: str | None) -> str | None:
    if source is None:
        return None
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountError(f"cannot read the password file {source!r}: {exc}") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise AccountError(f"password file {source!r} is empty: expected the password on its first line")
    if "\n" in password:
        raise AccountError(f"password file {source!r} has more than one line: expected only the password")
    return password


def _open() -> Store:
    return open_store(settings_mod.from_env().store_path)


def _print_generated(username: str, password: str) -> None:
    print(f"Generated password for {username!r} (shown only now; hand it over securely, e.g. in person):")
    print(f"  {password}")


def _add(args: argparse.Namespace) -> int:
    password = read_password(args.password_file)
    store = _open()
    try:
        created = user_admin.create_user(store, args.name, args.role, args.clinic, password, actor=_actor())
    finally:
        store.close()
    record_change(codes.USER_SECURITY_ATTRIBUTES_CHANGED, f"user added with role {created.user.role}",
                  f"user:{created.user.username}")
    clinic = f" for clinic {created.user.clinic!r}" if created.user.clinic else ""
    print(f"Created user {created.user.username!r} with role {created.user.role!r}{clinic}.")
    if created.generated_password:
        _print_generated(created.user.username, created.generated_password)
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _open()
    try:
        users = store.list_users(args.clinic)
        revoked = user_admin.revoked_clinics(store)
    finally:
        store.close()
    if not users:
        print("no user accounts" + (f" for clinic {args.clinic!r}" if args.clinic else ""))
        return 0
    now = time.time()
    table = [("NAME", "ROLE", "CLINIC", "STATUS", "TOTP", "CREATED")]
    for u in users:
        table.append((u.username, u.role, u.clinic or "-", user_admin.status(u, now, u.clinic in revoked),
                      "yes" if u.totp_secret else "no", u.created_at[:10]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _simple(action: str, args: argparse.Namespace) -> int:
    store = _open()
    try:
        if action in ("disable", "enable"):
            user_admin.set_disabled(store, args.name, action == "disable", actor=_actor())
            done = "disabled (its sessions have ended)" if action == "disable" else "enabled"
        elif action == "unlock":
            user_admin.unlock(store, args.name, actor=_actor())
            done = "unlocked"
        else:
            user_admin.reset_totp(store, args.name, actor=_actor())
            done = "without a second factor now (its sessions have ended)"
    finally:
        store.close()
    record_change(codes.USER_SECURITY_ATTRIBUTES_CHANGED, f"user {action}", f"user:{args.name}")
    print(f"User {args.name!r} is {done}.")
    return 0


def _reset_password(args: argparse.Namespace) -> int:
    password = read_password(args.password_file)
    store = _open()
    try:
        generated = user_admin.reset_password(store, args.name, password, actor=_actor())
    finally:
        store.close()
    record_change(codes.USER_SECURITY_ATTRIBUTES_CHANGED, "password reset", f"user:{args.name}")
    print(f"Password of {args.name!r} reset; its sessions have ended and any lockout is cleared.")
    if generated:
        _print_generated(args.name, generated)
    return 0
