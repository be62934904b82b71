"""`ray job submit` entrypoint for the batch job: the same options as `hyca-batch run`.

ray job submit --working-dir . -- python jobs/generate.py MANIFEST --out DIR
"""

import sys

from hyca_batch.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "run", *sys.argv[1:]]
    main()
