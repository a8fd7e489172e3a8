"""
Tiny Shakespeare as bytes (one token per UTF-8 byte, 256 ids): no BPE files, nothing to download
but the text, and a small vocabulary that trains fast on a CPU.

    python data/shakespeare_byte/prepare.py                   # downloads tiny Shakespeare (1.1 MB)
    python data/shakespeare_byte/prepare.py --input my.txt    # or any local UTF-8 text file

Writes train.bin and val.bin (uint16 ids; the last 10% of the text is val) and meta.pkl here.
MEAP's [MASK] is id 256. Expected output on tiny Shakespeare:

    1,115,394 characters -> byte (256 ids, [MASK] = 256)
    train.bin 1,003,854 tokens, val.bin 111,540 tokens, meta.pkl -> data/shakespeare_byte
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)
from tokenizer import prepare_main  # noqa: E402

if __name__ == "__main__":
    prepare_main("byte", os.path.relpath(os.path.dirname(os.path.abspath(__file__))))
