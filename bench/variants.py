"""The standard variant job, side by side: imgpipe's processing core, libvips (pyvips) and
Pillow, each on one core, over the same folder of images. Run by scripts/bench-variants.

Each tool runs in its own process pinned to CPU 0 (taskset), so its peak RSS is its own. The
job per image: 256/1024/2048 px on the longest edge (never upscaled), EXIF-oriented, lossy WebP
quality 80, metadata stripped. Timings exclude interpreter start-up and imports.
"""

import io
import json
import os
import subprocess
import sys
import time

SIZES = (2048, 1024, 256)


def files_in(folder):
    return sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, name))
    )


def run_libvips(files, rounds):
    import pyvips

    output = 0
    started = time.perf_counter()
    for _ in range(rounds):
        for path in files:
            for size in SIZES:
                image = pyvips.Image.thumbnail(path, size, height=size, size="down")
                output += len(image.webpsave_buffer(Q=80, strip=True))
    return started, output


def run_pillow(files, rounds):
    from PIL import Image, ImageOps

    output = 0
    started = time.perf_counter()
    for _ in range(rounds):
        for path in files:
            for size in SIZES:
                with Image.open(path) as image:
                    image.draft("RGB", (size, size))
                    image = ImageOps.exif_transpose(image)
                    image.thumbnail((size, size), Image.LANCZOS)
                    buffer = io.BytesIO()
                    image.save(buffer, "WEBP", quality=80)
                    output += buffer.tell()
    return started, output


def worker(tool, folder, rounds):
    files = files_in(folder)
    started, output = {"libvips": run_libvips, "pillow": run_pillow}[tool](files, rounds)
    seconds = time.perf_counter() - started
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


def main():
    folder, rounds, imgpipe_bin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    env_one_thread = {"VIPS_CONCURRENCY": "1"}
    os.environ.update(env_one_thread)
    results = {
        "imgpipe": measure([imgpipe_bin, folder, str(rounds)]),
        "libvips": measure([sys.executable, __file__, "--worker", "libvips", folder, str(rounds)]),
        "pillow": measure([sys.executable, __file__, "--worker", "pillow", folder, str(rounds)]),
    }
    vips = results["libvips"]
    print(f"\nvariant job over {folder}: {len(files_in(folder))} images x {rounds} round(s), one core each\n")
    print(f"{'tool':<10}{'images/s':>10}{'vs libvips':>12}{'output bytes':>15}{'vs libvips':>12}{'peak RSS MiB':>14}")
    for tool, r in results.items():
        rate = r["images"] / r["seconds"]
        vips_rate = vips["images"] / vips["seconds"]
        print(
            f"{tool:<10}{rate:>10.2f}{rate / vips_rate:>11.2f}x{r['output_bytes']:>15,}"
            f"{r['output_bytes'] / vips['output_bytes']:>11.2f}x{r['peak_rss_mib']:>14.0f}"
        )
    print("\ntargets (issue #8): imgpipe >= 1.5x libvips images/s; output bytes within 10% of libvips")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
