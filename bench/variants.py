"""The standard variant job, side by side: imgpipe's processing core, libvips (pyvips) and
Pillow, each on one core, over the same folder of images. Run by scripts/bench-variants.

Each tool runs in its own process pinned to CPU 0 (taskset), so its peak RSS is its own. The
job per image: 256/1024/2048 px on the longest edge (never upscaled), EXIF-oriented, lossy WebP,
metadata stripped; libvips and Pillow at quality 80 (their usual setting), imgpipe with its
variant spec's settings (IMGPIPE_PROCESSOR_VARIANTS and the WebP defaults, as the processor).
Timings exclude interpreter start-up and imports. Each tool's last round of variants is then
scored with SSIMULACRA2 against the same reference downscales (variant_quality).
"""

import io
import json
import os
import subprocess
import sys
import tempfile
import time

SIZES = (2048, 1024, 256)


def files_in(folder):
    return sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, name))
    )


def run_libvips(files, rounds, kept):
    import pyvips

    output = 0
    started = time.perf_counter()
    for round in range(rounds):
        for path in files:
            for size in SIZES:
                image = pyvips.Image.thumbnail(path, size, height=size, size="down")
                webp = image.webpsave_buffer(Q=80, strip=True)
                output += len(webp)
                if round == rounds - 1:
                    kept[(path, size)] = webp
    return started, output


def run_pillow(files, rounds, kept):
    from PIL import Image, ImageOps

    output = 0
    started = time.perf_counter()
    for round in range(rounds):
        for path in files:
            for size in SIZES:
                with Image.open(path) as image:
                    image.draft("RGB", (size, size))
                    image = ImageOps.exif_transpose(image)
                    image.thumbnail((size, size), Image.LANCZOS)
                    buffer = io.BytesIO()
                    image.save(buffer, "WEBP", quality=80)
                    output += buffer.tell()
                    if round == rounds - 1:
                        kept[(path, size)] = buffer.getvalue()
    return started, output


def worker(tool, folder, rounds, out):
    files = files_in(folder)
    kept = {}
    started, output = {"libvips": run_libvips, "pillow": run_pillow}[tool](files, rounds, kept)
    seconds = time.perf_counter() - started
    for (path, size), webp in kept.items():
        with open(os.path.join(out, f"{os.path.basename(path)}.{size}.webp"), "wb") as f:
            f.write(webp)
    print(json.dumps({"images": len(files) * rounds, "seconds": seconds, "output_bytes": output // rounds}))


def measure(command):
    """Runs one tool; its JSON line and its peak RSS in MiB."""
    process = subprocess.Popen(["taskset", "-c", "0", *command], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    out = process.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command[0]} failed: {out}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def quality(quality_bin, folder, out):
    """SSIMULACRA2 of one tool's variants: mean and worst image."""
    result = subprocess.run([quality_bin, folder, out], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    folder, rounds, imgpipe_bin, quality_bin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    env_one_thread = {"VIPS_CONCURRENCY": "1"}
    os.environ.update(env_one_thread)
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-variants-") as scratch:
        outs = {tool: os.path.join(scratch, tool) for tool in ("imgpipe", "libvips", "pillow")}
        for out in outs.values():
            os.mkdir(out)
        results = {
            "imgpipe": measure([imgpipe_bin, folder, str(rounds), outs["imgpipe"]]),
            "libvips": measure(
                [sys.executable, __file__, "--worker", "libvips", folder, str(rounds), outs["libvips"]]
            ),
            "pillow": measure(
                [sys.executable, __file__, "--worker", "pillow", folder, str(rounds), outs["pillow"]]
            ),
        }
        print("bench: scoring the variants (SSIMULACRA2)", file=sys.stderr)
        for tool, out in outs.items():
            results[tool]["quality"] = quality(quality_bin, folder, out)
    vips = results["libvips"]
    print(f"\nvariant job over {folder}: {len(files_in(folder))} images x {rounds} round(s), one core each\n")
    print(
        "| tool | images/s | vs libvips | output bytes | vs libvips | SSIMULACRA2 mean | worst image | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for tool, r in results.items():
        rate = r["images"] / r["seconds"]
        vips_rate = vips["images"] / vips["seconds"]
        q = r["quality"]
        print(
            f"| {tool} | {rate:.2f} | {rate / vips_rate:.2f}x | {r['output_bytes']:,} "
            f"| {r['output_bytes'] / vips['output_bytes']:.3f}x | {q['mean']:.2f} "
            f"| {q['worst']:.2f} ({q['worst_image']}) | {r['peak_rss_mib']:.0f} |"
        )
    print(
        "\ntargets (issue #19): imgpipe >= 3.5x libvips images/s; output bytes at most 1.05x libvips';"
        " SSIMULACRA2 mean and worst image no lower than libvips'"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
