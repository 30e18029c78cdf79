"""The one root of every error kdledger reports to its user, and its few branches.

It lives in the lowest Python layer so that every layer above (node, simulations) raises its own
branch and the CLI catches the root once, printing one line. Contract reverts keep the contract's
own error names: `RegistryError` carries them, as the ABI spells them.
"""


class KdledgerError(Exception):
    """Root: whatever the user can act on (a field to fix, a file to replace, a node to restart)."""


class ConfigError(KdledgerError, ValueError):
    """A scenario, option, argument or input file that cannot be used; the message names the field.
    The CLI exits 2 for it (bad input), as for DataError; 1 for every other error."""


class DataError(KdledgerError, ValueError):
    """A dataset that cannot be read, or does not fit the scenario (exit status 2)."""


class ArtifactError(KdledgerError):
    """A model file that fails its hash, seal or format checks, or is not the file a node signed."""


class ChainError(KdledgerError):
    """The chain, its node or the Solidity compiler could not be reached, or a contract refused."""


class RunFailed(KdledgerError):
    """A run could not go on: too few nodes answered, nothing to distil, or a phase failed."""


def reported_errors() -> tuple[type[BaseException], ...]:
    """The user's mistakes and the world's refusals (an RPC that does not answer or refuses): reported in one
    line, without a traceback, by the CLI and the explorer."""
    import requests
    from web3.exceptions import Web3RPCError

    return (KdledgerError, requests.ConnectionError, Web3RPCError)
