"""What one user can do to the server's memory, disk and other users, against the real app.

    python -m benchmarks.abuse

Starts ``python app.py`` with its own output and prompt folders, then for each case prints the server's resident
memory and the bytes under its folders before and after, and whether the case was refused with a message:

- an inline ``data:`` URL image whose PNG header claims 20,000 × 20,000 pixels (a few hundred bytes sent);
- a zip of 60 highly compressible 2048² images (720 MB unpacked, under the 1 GB bound) through the Dataset tab:
  the unpacked images must not stay on disk;
- 60 prompt saves by one client while another client's prompt must survive.
"""

from __future__ import annotations

import base64
import io
import tempfile
import zipfile
import zlib
from pathlib import Path

from PIL import Image

from benchmarks.load import rss_mb, start_app

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def huge_png_header(side: int = 20_000) -> bytes:
    """A valid PNG signature and IHDR claiming ``side`` × ``side`` RGB pixels, and almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(
        b"IEND", b"")


def main() -> None:
    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="abuse-"))
    outputs, data = work / "outputs", work / "data"
    server, client = start_app({"DISTILL_LENS_OUTPUT_DIR": str(outputs), "DISTILL_LENS_DATA": str(data),
                                "DISTILL_LENS_OUTPUT_MB": "200"})
    url_of = client.src
    try:
        client.predict(handle_file(str(ROOT / "demos/examples/shapes_0.png")), "shapes-detection", 0.3,
                       api_name="/detect")  # models loaded: what follows is the cases' own cost
        print("| case | refused with a message | server RSS before → after (MB) | disk before → after (MB) |")
        print("|---|---|---|---|")

        def case(label: str, run) -> None:
            before = rss_mb(server.pid), folder_bytes(work) / 2**20
            try:
                outcome = run()
            except Exception as error:
                outcome = f"yes: {str(error).splitlines()[-1][:90]}"
            after = rss_mb(server.pid), folder_bytes(work) / 2**20
            print(f"| {label} | {outcome} | {before[0]:.0f} → {after[0]:.0f} | {before[1]:.1f} → {after[1]:.1f} |",
                  flush=True)

        url = "data:image/png;base64," + base64.b64encode(huge_png_header()).decode()
        case(f"data: URL claiming 20,000² pixels ({len(url)} bytes)", lambda: client.predict(
            {"url": url, "meta": {"_type": "gradio.FileData"}}, "shapes-detection", 0.3, api_name="/detect") and "no")

        archive = work / "bomb.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            buffer = io.BytesIO()
            Image.new("RGB", (2048, 2048), (200, 30, 30)).save(buffer, format="BMP")  # 12 MB, compresses well
            for i in range(60):
                bundle.writestr(f"plain_{i:03d}.bmp", buffer.getvalue())
        case(f"zip of 60 plain 2048² images, 720 MB unpacked ({archive.stat().st_size / 2**20:.1f} MB sent)",
             lambda: client.predict(handle_file(str(archive)), "shapes-detection", "", None, "circle", 0.3,
                                    api_name="/dataset") and "no (ran; its unpacked images removed)")

        alice, bob = Client(url_of, verbose=False), Client(url_of, verbose=False)
        args = ("shapes-clip", "red circle, blue square", "coop", "", None, 1, 1, "", "")
        kept = alice.predict(*args[:3], "alices", *args[4:], api_name="/tune_prompts")[0]

        def flood():
            for _ in range(60):
                bob.predict(*args, api_name="/tune_prompts")
            mine = [p["name"] for p in alice.predict(api_name="/prompts") if not p["builtin"]]
            return f"no; alice's prompt {'kept' if kept in mine else 'LOST'}"

        case("60 prompt saves by one client", flood)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
