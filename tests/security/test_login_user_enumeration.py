"""A password login as a user that does not exist costs the same scrypt check as a wrong password for one
that does, so the time an answer takes does not tell an attacker which user names exist."""
from __future__ import annotations

import pytest

from middlewared_plugin.auth import accounts
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer


@pytest.fixture
def checked_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stored hashes each password check compared against, in order."""
    seen: list[str] = []
    real = accounts.verify_password

    def recording(password: str, stored: str) -> bool:
        seen.append(stored)
        return real(password, stored)

    monkeypatch.setattr(accounts, "verify_password", recording)
    return seen


async def test_an_unknown_user_is_checked_against_a_real_hash(server: TestServer, checked_hashes: list[str]) -> None:
    assert await server.app.accounts.check_password("nobody-here", "guess") is None
    assert await server.app.accounts.check_password(ADMIN, "wrong") is None
    unknown, known = checked_hashes
    # The same scheme and cost parameters, so the same work: only the salt and digest differ.
    assert unknown.split("$")[:4] == known.split("$")[:4]
    assert unknown != known


async def test_a_real_password_still_logs_in_and_a_guess_for_an_unknown_user_never_does(server: TestServer) -> None:
    assert await server.app.accounts.check_password(ADMIN, ADMIN_PASSWORD) is not None
    assert await server.app.accounts.check_password("nobody-here", ADMIN_PASSWORD) is None
