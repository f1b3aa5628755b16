"""Errors about bundles. Each message is one line a user can act on."""


class BundleError(Exception):
    """A bundle cannot be read, trusted or used as asked."""


class ManifestError(BundleError):
    """manifest.json is missing, truncated, invalid or of an unsupported schema."""


class ChecksumError(BundleError):
    """A bundle file does not match the sha256 or size its manifest records."""


class NoTargetError(BundleError):
    """The bundle has no target this machine can run (or not the one asked for)."""


class IncompatibleBundleError(BundleError):
    """Two bundles (or a bundle and a new build) describe different models."""
