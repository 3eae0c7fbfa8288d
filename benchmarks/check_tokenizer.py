"""Every Unicode code point through the C tokenizer and the base's tokenizer: do the ids agree?

    make rlf-run && python benchmarks/check_tokenizer.py MODEL.gguf [--base smollm2-135m] [--runtime ./rlf-run]

Each code point c (1..0x2FFFF, surrogates excepted, then every 7th up to 0x10FFFF) goes in three contexts,
`a{c}b {c}1 x{c}{c} 'x`, which reach every branch of the pre-tokeniser regex (letter, number, other and space
runs, with and without the optional leading space). Prints the count of strings whose ids differ and the first
few code points. A check to run by hand (about 10 s), not part of the test suite.
"""

import argparse
import subprocess
import tempfile
from pathlib import Path

from rlf.base import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="a GGUF file from `rlf export` (its tokenizer is the one checked)")
    ap.add_argument("--base", default="smollm2-135m", help="the base whose tokenizer is the reference")
    ap.add_argument("--runtime", default="./rlf-run")
    args = ap.parse_args()
    tok = load_tokenizer(args.base)
    cps = [c for c in range(1, 0x30000) if not 0xD800 <= c <= 0xDFFF] + list(range(0x30000, 0x110000, 7))
    strings = [f"a{chr(c)}b {chr(c)}1 x{chr(c)}{chr(c)} 'x" for c in cps]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "strings.bin"
        path.write_bytes(b"".join(s.encode() + b"\0" for s in strings))
        out = subprocess.run([args.runtime, args.model, "--tokenize-file", str(path)], capture_output=True,
                             check=True).stdout.decode().split("\n")
    ref = tok(strings)["input_ids"]
    bad = [hex(c) for c, line, ids in zip(cps, out, ref) if [int(i) for i in line.split()] != ids]
    print(f"{len(strings)} strings, {len(bad)} with different ids{': ' + ', '.join(bad[:20]) if bad else ''}")


if __name__ == "__main__":
    main()
