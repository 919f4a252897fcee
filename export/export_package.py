"""Export a training checkpoint as a model package: a thin entry point over `diffunfold export`.

python export/export_package.py runs/small --out models/small
python export/export_package.py --help
"""

import sys

from diffunfold.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
