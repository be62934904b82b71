"""`ray job submit` entrypoint for the cost report: the same options as `hyca-batch report`.

ray job submit --working-dir . -- python jobs/cost_report.py s3://bucket/runs/run1 --out s3://bucket/reports/run1
"""

import sys

from hyca_batch.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "report", *sys.argv[1:]]
    main()
