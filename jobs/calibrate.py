"""`ray job submit` entrypoint for HyCa calibration: the same options as `hyca-batch calibrate`.

ray job submit --working-dir . -- python jobs/calibrate.py --model hunyuanvideo --out map.safetensors
"""

import sys

from hyca_batch.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "calibrate", *sys.argv[1:]]
    main()
