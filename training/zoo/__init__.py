"""Pretrained model zoo: the registry of entries, the resumable downloader and reid-fetch's fetch/convert."""
