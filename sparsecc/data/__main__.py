import sys

from sparsecc.data.fetching import main

sys.exit(main())
