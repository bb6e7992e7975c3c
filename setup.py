from setuptools import find_packages, setup

# Pinned, known to work together on Python 3.11 (see README "Versions").
# Beam 2.77.0: the newest release; Beam's Flink job-server jars are not served by the
# registry this project may use, see docs/flink.md.
INSTALL_REQUIRES = [
    "apache-beam[aws]==2.77.0",
    "snowplow-analytics-sdk==0.2.3",
    "boto3==1.44.8",
    "botocore==1.44.8",
    "moto[server]==5.2.5",  # the embedded AWS of `make run` (and of the tests)
    "aiohttp==3.14.5",  # the dashboard's web server (pipeline.apps.dashboard), SSE included
    "plotly==7.1.0",  # only for the plotly.js it bundles, served by the dashboard (no CDN)
]

TEST_REQUIRES = [
    "pytest==9.2.0",
    "pytest-timeout==2.4.0",
    "hypothesis==6.170.17",
    "ruff==0.17.6",
    # 4.51.0: 4.52.0 needs a certifi newer than the registry serves
    "selenium==4.51.0",  # the dashboard's browser test, driving Debian's chromium + chromedriver
]

setup(
    name="codecombat-level-analytics",
    version="0.1.0",
    description="Real-time level and transition counts from Snowplow enriched events, on Apache Beam.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipeline", "pipeline.*"]),
    package_data={"pipeline.rules": ["data/*.json"], "pipeline.apps.dashboard": ["static/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
