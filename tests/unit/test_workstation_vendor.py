"""The OHIF install step: integrity pin, safe extraction, the sub-path rewrite and our app-config."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from securepacs.workstation import app_config, package, sub_path, vendor
from securepacs.workstation.package import PackageError, Release

# Shaped like @ohif/app 3.13.2's dist/index.html (two inline scripts, absolute links, the SW loader).
INDEX = ('<!doctype html><html><head><meta name="msapplication-TileImage" content="/assets/tile.png">'
         '<script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>'
         '<link rel="manifest" href="/manifest.json"><link rel="icon" href="/assets/favicon.ico">'
         '<script rel="preload" as="script" src="/app-config.js"></script>'
         '<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
         '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
         '<script defer src="/app.bundle.0f61.js"></script><link href="/app.bundle.css" rel="stylesheet">'
         '</head><body><div id="root"></div></body></html>')
FILES = {
    "package/LICENSE": "MIT License\n",
    "package/package.json": "{}",
    "package/dist/index.html": INDEX,
    "package/dist/app.bundle.0f61.js": 'var a=1;\n__webpack_require__.p = "/";\nvar b=2;\n',
    "package/dist/compute.bundle.77.js": '__webpack_require__.p = "/";\n',
    "package/dist/app.bundle.css": "@font-face{src:url(/a34f.woff2) format(\"woff2\")}",
    "package/dist/a34f.woff2": "font",
    "package/dist/assets/favicon.ico": "icon",
    "package/dist/app-config.js": "window.config = {dataSources: ['https://example.org']};",
    "package/dist/sw.js": "importScripts('https://storage.googleapis.com/workbox-cdn/x.js')",
    "package/dist/init-service-worker.js": "navigator.serviceWorker",
    "package/dist/google.js": "window.config = {};",
    "package/dist/manifest.json": '{"start_url": "/"}',
}


def tarball(files: dict[str, str], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return out.getvalue()


def release_for(data: bytes) -> Release:
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")
    return Release("@ohif/app", "3.13.2", "https://registry.npmjs.org/@ohif/app/-/app-3.13.2.tgz",
                   f"sha512-{digest}")


def no_download(url: str) -> bytes:
    raise AssertionError(f"unexpected download of {url}")


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, Release]:
    data = tarball(FILES)
    source = tmp_path / "app.tgz"
    source.write_bytes(data)
    dest = tmp_path / "www" / "ohif"
    release = release_for(data)
    assert vendor.install(dest, tarball=source, release=release, fetch=no_download) is True
    return dest, source, release


def test_the_page_has_no_inline_script_and_links_under_the_sub_path(built) -> None:
    dest, _, _ = built
    html = (dest / "index.html").read_text()
    assert "<script>" not in html and 'PUBLIC_URL' not in html
    assert '<script src="/ohif/securepacs-boot.js"></script>' in html
    assert html.count("securepacs-boot.js") == 1
    assert 'src="/ohif/app-config.js"' in html and 'src="/ohif/app.bundle.0f61.js"' in html
    assert 'href="/ohif/assets/favicon.ico"' in html and 'content="/ohif/assets/tile.png"' in html
    assert "init-service-worker" not in html and "manifest" not in html
    assert (dest / "securepacs-boot.js").read_text().count('window.PUBLIC_URL = "/ohif/";') == 1


def test_bundles_and_fonts_load_from_the_sub_path(built) -> None:
    dest, _, _ = built
    assert '__webpack_require__.p = "/ohif/";' in (dest / "app.bundle.0f61.js").read_text()
    assert (dest / "compute.bundle.77.js").read_text() == '__webpack_require__.p = "/ohif/";\n'
    assert "url(/ohif/a34f.woff2)" in (dest / "app.bundle.css").read_text()


def test_what_we_never_serve_is_gone_and_the_licence_stays(built) -> None:
    dest, _, _ = built
    for name in ("sw.js", "init-service-worker.js", "google.js", "manifest.json"):
        assert not (dest / name).exists(), name
    assert (dest / "LICENSE").read_text() == "MIT License\n"
    assert not (dest / "package.json").exists()  # only dist/ and the notices are taken


def test_our_app_config_has_one_same_origin_source(built) -> None:
    dest, _, _ = built
    text = (dest / "app-config.js").read_text()
    assert "example.org" not in text
    config = app_config.settings("/ohif/")
    assert json.dumps(config, indent=2, sort_keys=True) in text
    assert config["routerBasename"] == "/ohif"
    assert config["dangerouslyUseDynamicConfig"] == {"enabled": False}
    [source] = config["dataSources"]
    settings = source["configuration"]
    assert (settings["qidoRoot"], settings["wadoRoot"], settings["wadoUriRoot"]) == ("/dicom-web", "/dicom-web",
                                                                                      "/wado")
    assert not settings["dicomUploadEnabled"] and not settings["supportsReject"] and not settings["supportsStow"]
    assert "error.status === 401" in text and '"/login"' in text


def test_a_second_install_is_a_no_op(built) -> None:
    dest, source, release = built
    before = (dest / "index.html").stat().st_mtime_ns
    assert vendor.install(dest, tarball=source, release=release, fetch=no_download) is False
    assert vendor.install(dest, release=release, fetch=no_download) is False
    assert (dest / "index.html").stat().st_mtime_ns == before


def test_a_download_is_verified_too(tmp_path: Path) -> None:
    data = tarball(FILES)
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        return data

    assert vendor.install(tmp_path / "ohif", release=release_for(data), fetch=fetch)
    assert calls == ["https://registry.npmjs.org/@ohif/app/-/app-3.13.2.tgz"]
    with pytest.raises(PackageError, match="does not match the pinned integrity"):
        vendor.install(tmp_path / "other", release=release_for(b"another build"), fetch=fetch)
    assert not (tmp_path / "other").exists()


def test_a_tampered_tarball_leaves_the_installed_viewer_serving(built) -> None:
    dest, source, release = built
    source.write_bytes(tarball({**FILES, "package/dist/app.bundle.0f61.js": "evil()"}))
    stale = Release(release.name, "3.13.3", release.tarball_url, release.integrity)
    with pytest.raises(PackageError, match=rf"{source} does not match the pinned integrity: expected sha512-"):
        vendor.install(dest, tarball=source, release=stale, fetch=no_download)
    assert "/ohif/" in (dest / "app.bundle.0f61.js").read_text()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["ohif"]


def test_a_build_that_cannot_move_fails_and_keeps_the_previous(built, tmp_path: Path) -> None:
    dest, _, release = built
    data = tarball({**FILES, "package/dist/index.html": "<html><script src='/x.js'></script></html>"})
    other = Release(release.name, "9.9.9", release.tarball_url, release_for(data).integrity)
    source = tmp_path / "other.tgz"
    source.write_bytes(data)
    with pytest.raises(PackageError, match=r"index\.html: expected OHIF.s inline scripts setting window\.PUBLIC_URL"):
        vendor.install(dest, tarball=source, release=other, fetch=no_download)
    assert vendor.is_current(dest, release)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["ohif"]


@pytest.mark.parametrize("entry", ["package/dist/../../escape.js", "/etc/securepacs.js"])
def test_entries_outside_the_package_are_refused(tmp_path: Path, entry: str) -> None:
    data = tarball({**FILES, entry: "x"})
    with pytest.raises(PackageError, match="escapes the package directory"):
        package.extract(data, tmp_path / "out", "app.tgz")
    assert not (tmp_path / "escape.js").exists()


def test_links_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("package/dist/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(PackageError, match="'package/dist/passwd' is not a regular file or directory"):
        package.extract(tarball(FILES, [link]), tmp_path / "out", "app.tgz")
    assert not (tmp_path / "out" / "passwd").exists()


def test_garbage_is_named(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"app\.tgz is not a readable gzip-compressed tar archive"):
        package.extract(b"not a tarball", tmp_path, "app.tgz")
    with pytest.raises(PackageError, match="integrity 'md5-abc' is invalid"):
        package.check_integrity(b"", "md5-abc", "app.tgz")


@pytest.mark.parametrize("base", ["/", "ohif/", "/ohif", "/a/b/", "/../"])
def test_the_sub_path_is_one_segment(base: str) -> None:
    with pytest.raises(sub_path.RewriteError, match="sub-path"):
        sub_path.check_base(base)


def test_the_pin_is_the_reviewed_release() -> None:
    assert package.OHIF.version == "3.13.2"
    assert package.OHIF.tarball_url == "https://registry.npmjs.org/@ohif/app/-/app-3.13.2.tgz"
    assert package.OHIF.integrity.startswith("sha512-") and len(package.OHIF.integrity) == 95


def test_the_command_names_a_tarball_that_is_not_the_pinned_one(tmp_path: Path) -> None:
    source = tmp_path / "app.tgz"
    source.write_bytes(tarball(FILES))
    command = Path(sys.executable).with_name("securepacs")
    done = subprocess.run([str(command), "ohif", "install", "--dest", str(tmp_path / "ohif"), "--tarball",
                           str(source)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"securepacs: error: {source} does not match the pinned integrity" in done.stderr
    assert not (tmp_path / "ohif").exists()
