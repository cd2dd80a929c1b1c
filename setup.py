from setuptools import find_packages, setup

# twistd finds plugins in twisted.plugins, which has no __init__.py in this project.
PLUGINS = ["twisted.plugins"]

setup(
    name="archivas",
    version="0.1.0",
    description="Archivas: a Proof-of-Space-and-Time blockchain node on Twisted",
    python_requires=">=3.11",
    packages=find_packages(include=["archivas", "archivas.*"]) + PLUGINS,
    package_data={"archivas.chain": ["networks/*.json"],
                  # the explorer's pages and the files they load (docs/explorer.md)
                  "archivas.explorer": ["templates/*.html", "static/*.js", "static/*.css", "static/*.svg"]},
    install_requires=[
        "twisted>=24.3",
        "klein>=23.5",
        "treq>=23.11",
        "pynacl>=1.5",
        "chiapos==2.0.12",
        "chiavdf==1.2.0",
        # The reference BIP-173 implementation, so bech32 is not hand-written.
        "bech32==1.2.0",
        "attrs>=23.1",
        # Compact per-peer "already has this" filters (a Rust Bloom filter, set-like API).
        "rbloom==1.5.4",
        # The explorer's server-rendered pages.
        "jinja2>=3.1",
        # /metrics in the Prometheus text format, served through its Twisted resource.
        "prometheus_client>=0.20",
        # BIP-39 recovery phrases for wallet keys (the standard word list, maintained by Trezor).
        "mnemonic>=0.21",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-twisted>=1.14", "hypothesis>=6.100",
                 # make lint: ruff, and mypy with the plugin that reads zope.interface.
                 "ruff>=0.6", "mypy>=1.10", "mypy-zope>=1.0",
                 # The explorer in headless Chromium; the RPC checked against its OpenAPI document.
                 "selenium>=4.20", "schemathesis>=3.30"],
    },
    entry_points={
        "console_scripts": [
            "archivas-node = archivas.scripts.node:main",
            "archivas-timelord = archivas.scripts.timelord:main",
            "archivas-farmer = archivas.scripts.farmer:main",
            "archivas-wallet = archivas.scripts.wallet:main",
            "archivas-sim = archivas.sim.cli:main",
        ]
    },
)
