"""Code that runs on a worker: plain functions over bytes and dataclasses; no Ray, no database."""
