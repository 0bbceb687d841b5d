"""Identity binding and live trust state: certificate <-> clinic <-> AE titles, revocation, limits."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _gateway_env import AET, Pki, enrol

from securepacs.config.gateway_settings import GatewayError
from securepacs.gateway import pdu
from securepacs.gateway import peer_identity as identity_mod
from securepacs.gateway.limits import AssociationLimits, RateLimiter
from securepacs.gateway.peer_identity import (
    PeerIdentity,
    TrustState,
    check_destination,
    check_egress,
    check_ingress,
    load_crl_serials,
)
from securepacs.pki import certificates
from securepacs.store.database import Store


@pytest.fixture
def env(tmp_path: Path):
    p = Pki(tmp_path / "certs")
    store = Store(tmp_path / "store.db")
    a = p.clinic("clinicA", ["CLINICA", "CLINICA2"])
    b = p.clinic("clinicB", ["CLINICB"])
    enrol(store, a, "clinicA", ["CLINICA", "CLINICA2"], ("127.0.0.1", 11112))
    enrol(store, b, "clinicB", ["CLINICB"])
    trust = TrustState(store.path, p.crl, p.clinic_ca, refresh_interval=0.0)
    yield p, store, trust, a, b
    trust.close()
    store.close()


def peer(cred) -> PeerIdentity:
    return PeerIdentity.from_certificate(cred.certificate)


def rj(refusal) -> tuple[int, int, int]:
    return pdu.parse_reject(refusal.pdu())


def test_the_certificate_identity_comes_from_its_san_uris(env):
    _, _, _, a, _ = env
    identity = peer(a)
    assert identity.clinic == "clinicA" and identity.aets == ("CLINICA", "CLINICA2")
    assert identity.serial == a.serial and len(identity.fingerprint_sha256) == 64
    assert "CN=clinicA" in identity.subject


def test_own_aet_is_accepted_for_every_enrolled_title(env):
    _, _, trust, a, _ = env
    for aet in ("CLINICA", "CLINICA2"):
        assert check_ingress(peer(a), aet, AET, AET, trust.snapshot) is None


def test_called_aet_other_than_ours_is_refused_with_reason_7(env):
    _, _, trust, a, _ = env
    refusal = check_ingress(peer(a), "CLINICA", "ORTHANC", AET, trust.snapshot)
    assert refusal.code == "called-aet-not-ours" and rj(refusal) == (1, 1, 7)


def test_another_clinics_aet_is_refused_with_reason_3(env):
    _, _, trust, a, _ = env
    refusal = check_ingress(peer(a), "CLINICB", AET, AET, trust.snapshot)
    assert refusal.code == "calling-aet-not-in-certificate" and rj(refusal) == (1, 1, 3)


def test_a_certificate_claiming_an_aet_enrolled_elsewhere_is_refused(env):
    p, _, trust, _, _ = env
    # Mis-issued: clinicA's certificate also names clinicB's AE title. The store is the authority.
    rogue = p.clinic("clinicA-rogue", ["CLINICB"], uris=certificates.clinic_uris("clinicA", ["CLINICB"]))
    refusal = check_ingress(peer(rogue), "CLINICB", AET, AET, trust.snapshot)
    assert refusal.code == "calling-aet-not-enrolled-for-clinic" and rj(refusal) == (1, 1, 3)


def test_non_clinic_certificates_and_unknown_clinics_are_refused(env):
    p, _, trust, _, _ = env
    # The archive's own server certificate is issued by the same CA and has clientAuth: it names no clinic.
    assert check_ingress(peer(p.server), "CLINICA", AET, AET, trust.snapshot).code == "certificate-names-no-clinic"
    ghost = p.clinic("ghost", ["GHOST"])
    assert check_ingress(peer(ghost), "GHOST", AET, AET, trust.snapshot).code == "clinic-not-enrolled"


def test_expired_and_not_yet_valid_certificates_are_refused(env):
    p, _, trust, _, _ = env
    past = datetime.now(UTC) - timedelta(days=2)
    expired = p.clinic("clinicA", ["CLINICA"], not_before=past - timedelta(days=1), not_after=past)
    refusal = check_ingress(peer(expired), "CLINICA", AET, AET, trust.snapshot)
    assert refusal.code == "certificate-expired" and rj(refusal) == (1, 1, 1)
    future = datetime.now(UTC) + timedelta(hours=1)
    early = p.clinic("clinicA", ["CLINICA"], not_before=future, not_after=future + timedelta(hours=1))
    assert check_ingress(peer(early), "CLINICA", AET, AET, trust.snapshot).code == "certificate-not-yet-valid"


def test_store_revocation_is_seen_after_a_refresh(env):
    _, store, trust, a, _ = env
    before = trust.snapshot
    store.revoke_clinic("clinicA")
    assert check_ingress(peer(a), "CLINICA", AET, AET, before) is None  # the old snapshot did not know
    refusal = check_ingress(peer(a), "CLINICA", AET, AET, trust.refresh())
    assert refusal.code == "certificate-revoked" and rj(refusal) == (1, 1, 1)


def test_crl_revocation_is_seen_when_the_file_changes(env):
    p, _, trust, a, b = env
    p.write_crl([a.serial])
    assert check_ingress(peer(a), "CLINICA", AET, AET, trust.refresh()).code == "certificate-revoked"
    assert check_ingress(peer(b), "CLINICB", AET, AET, trust.snapshot) is None
    p.write_crl([])
    assert check_ingress(peer(a), "CLINICA", AET, AET, trust.refresh()) is None
    p.crl.unlink()
    assert trust.refresh().revoked_serials == frozenset()


def test_a_crl_not_signed_by_our_ca_is_ignored(env, tmp_path):
    p, _, trust, a, b = env
    p.write_crl([a.serial])
    trust.refresh()
    # An attacker's CRL (another CA, same file name) must neither revoke nor un-revoke anything.
    other = Pki(tmp_path / "other")
    other.write_crl([b.serial])
    os.replace(other.crl, p.crl)
    snapshot = trust.refresh()
    assert a.serial in snapshot.revoked_serials and b.serial not in snapshot.revoked_serials
    assert load_crl_serials(p.crl, p.clinic_ca) is None
    p.crl.write_text("garbage")
    assert a.serial in trust.refresh().revoked_serials


def test_trust_state_fails_closed_when_the_store_cannot_be_read(env, monkeypatch):
    _, _, trust, _, _ = env
    monkeypatch.setattr(identity_mod, "STALE_AFTER", 0.1)
    trust.refresh()
    assert not trust.stale
    trust.store.close()  # every further read fails
    time.sleep(0.15)
    snapshot = trust.refresh()  # logs the error, keeps the last known state...
    assert "clinicA" in snapshot.clinics
    assert trust.stale  # ...but reports it as stale, so the gateway refuses new associations


def test_missing_store_is_a_startup_error(tmp_path):
    with pytest.raises(GatewayError, match="does not exist"):
        TrustState(tmp_path / "nope.db", tmp_path / "crl.pem", tmp_path / "ca.crt")


# -- egress: Orthanc -> clinic ---------------------------------------------------------------------------


def test_egress_picks_the_clinic_owning_the_called_aet(env):
    _, store, trust, _, _ = env
    clinic = check_egress(AET, "CLINICA2", AET, trust.snapshot)
    assert clinic.name == "clinicA" and (clinic.move_host, clinic.move_port) == ("127.0.0.1", 11112)
    assert check_egress(AET, "NOBODY", AET, trust.snapshot).code == "destination-aet-unknown"
    assert check_egress(AET, "CLINICB", AET, trust.snapshot).code == "destination-has-no-address"
    assert rj(check_egress("CLINICB", "CLINICA", AET, trust.snapshot)) == (1, 1, 3)
    store.revoke_clinic("clinicA")
    assert check_egress(AET, "CLINICA", AET, trust.refresh()).code == "destination-clinic-revoked"


def test_destination_certificate_must_serve_name_the_host_and_not_another_clinic(env):
    p, _, trust, a, _ = env
    clinic = check_egress(AET, "CLINICA", AET, trust.snapshot)
    loopback = {"usage": "server+client", "ip_addresses": ["127.0.0.1"]}
    # The bundle `clinic add --host 127.0.0.1` issues: clinic URIs, serverAuth, the host in the SAN.
    bundle = p.clinic("clinicA", ["CLINICA", "CLINICA2"], **loopback)
    assert check_destination(peer(bundle), clinic, "127.0.0.1", bundle.certificate, trust.snapshot) is None
    assert (check_destination(peer(bundle), clinic, "10.0.0.9", bundle.certificate, trust.snapshot)
            == "destination-certificate-does-not-name-host")
    # A clientAuth-only bundle (enrolled without --host) cannot act as a server.
    assert (check_destination(peer(a), clinic, "127.0.0.1", a.certificate, trust.snapshot)
            == "destination-certificate-not-for-servers")
    other = p.clinic("clinicB", ["CLINICB"], **loopback)  # another clinic behind the same address
    assert (check_destination(peer(other), clinic, "127.0.0.1", other.certificate, trust.snapshot)
            == "destination-certificate-of-another-clinic")
    # An SCP certificate of our CA that names no clinic is accepted for the host it names (DNS or IP).
    named = p.issue("scp", "scp", "server+client", ip_addresses=["::1"], dns_names=["scp.clinic-a.example"])
    for host in ("::1", "0:0::1", "SCP.clinic-a.example", "scp.clinic-a.example."):
        assert check_destination(peer(named), clinic, host, named.certificate, trust.snapshot) is None, host
    assert (check_destination(peer(named), clinic, "10.0.0.9", named.certificate, trust.snapshot)
            == "destination-certificate-does-not-name-host")
    p.write_crl([bundle.serial])
    assert (check_destination(peer(bundle), clinic, "127.0.0.1", bundle.certificate, trust.refresh())
            == "destination-certificate-revoked")


# -- limits ------------------------------------------------------------------------------------------------


def test_rate_limiter_is_a_token_bucket_per_ip():
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("10.0.0.2")  # other addresses have their own bucket
    now[0] += 0.5  # one token back
    assert limiter.allow("10.0.0.1") and not limiter.allow("10.0.0.1")
    now[0] += 10
    limiter.prune()
    assert len(limiter) == 0  # full buckets carry no information


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(rate=1.0, burst=1, max_ips=100)
    for i in range(1000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    assert RateLimiter(rate=0, burst=1).allow("x")  # 0 disables


def test_association_limits_global_and_per_clinic():
    limits = AssociationLimits(max_total=3, max_per_clinic=2)
    assert limits.acquire("a") is None and limits.acquire("a") is None
    assert limits.acquire("a") == "too-many-associations-for-clinic"
    assert limits.acquire("b") is None
    assert limits.acquire("c") == "too-many-associations"
    limits.release("a")
    assert limits.of("a") == 1 and limits.acquire("c") is None

