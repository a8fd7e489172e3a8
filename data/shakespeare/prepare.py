"""
Tiny Shakespeare as GPT-2 BPE tokens, for `python train.py config/shakespeare_cpu.py`:

    python data/shakespeare/prepare.py                   # downloads tiny Shakespeare (1.1 MB)
    python data/shakespeare/prepare.py --input my.txt    # or any local UTF-8 text file

Writes train.bin and val.bin (uint16 ids; the last 10% of the text is val) and meta.pkl here.
GPT-2's BPE comes through tiktoken, which downloads it once (offline: set TIKTOKEN_CACHE_DIR to a
folder holding it). MEAP's [MASK] is id 50257, right after GPT-2's 50,257 ids. Expected output on
tiny Shakespeare:

    1,115,394 characters -> gpt2 (50,257 ids, [MASK] = 50257)
    train.bin 301,966 tokens, val.bin 36,059 tokens, meta.pkl -> data/shakespeare
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)
from tokenizer import prepare_main  # noqa: E402

if __name__ == "__main__":
    prepare_main("gpt2", os.path.relpath(os.path.dirname(os.path.abspath(__file__))))
