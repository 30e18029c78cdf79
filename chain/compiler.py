"""Compile contracts/ModelRegistry.sol with py-solc-x, whatever compiler this machine has.

The compiler is resolved in order: `solc` on PATH, a solc that py-solc-x installed, else npm's
solcjs behind chain/bin/solc, a shim that speaks the native command line. Running kdledger needs
none of them: the build artifact is committed, and a test checks that a fresh compile reproduces it.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import solcx

from chain.errors import ChainError

CONTRACT = "ModelRegistry"
SOLC_VERSION = "0.8.30"
EVM_VERSION = "cancun"  # both py-evm and anvil run it
SOLCJS_SHIM = Path(__file__).resolve().parent / "bin" / "solc"


class CompilerNotFound(ChainError):
    pass


def contracts_dir() -> Path:
    return Path(str(resources.files("contracts")))


def artifact_path() -> Path:
    return contracts_dir() / "build" / f"{CONTRACT}.json"


def resolve_solc() -> Path:
    """The first compiler found: solc on PATH, one py-solc-x installed, the solcjs shim."""
    on_path = shutil.which("solc")
    if on_path:
        return Path(on_path)
    try:
        installed = solcx.get_installed_solc_versions()
    except Exception:  # py-solc-x raises when its folder does not exist yet
        installed = []
    if installed:
        return Path(solcx.install.get_executable(max(installed)))
    node_modules = contracts_dir().parent / "node_modules" / ".bin" / "solcjs"
    if node_modules.exists():
        return SOLCJS_SHIM
    raise CompilerNotFound(
        "no Solidity compiler: put solc on PATH, run `python -m solcx.install`, or `npm ci` for solcjs"
    )


def standard_input() -> dict:
    source = f"contracts/{CONTRACT}.sol"
    return {
        "language": "Solidity",
        "sources": {source: {"urls": [source]}},
        "settings": {
            "remappings": ["@openzeppelin/=node_modules/@openzeppelin/"],
            "optimizer": {"enabled": True, "runs": 10_000},
            "viaIR": True,
            "evmVersion": EVM_VERSION,
            "metadata": {"bytecodeHash": "none", "appendCBOR": False},
            "outputSelection": {source: {CONTRACT: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
        },
    }


def compile_registry(solc: Path | None = None) -> dict:
    """Compile the registry and return its artifact (ABI, bytecode, compiler version)."""
    solc = solc or resolve_solc()
    version = str(solcx.wrapper.get_solc_version(solc))
    if version != SOLC_VERSION:
        raise CompilerNotFound(f"solc {version} at {solc}: the committed artifact is built with {SOLC_VERSION}")
    root = contracts_dir().parent
    out = solcx.compile_standard(standard_input(), solc_binary=solc, base_path=root, allow_paths=[root])
    built = out["contracts"][f"contracts/{CONTRACT}.sol"][CONTRACT]
    return {
        "contractName": CONTRACT,
        "compiler": f"solc {version}",
        "evmVersion": EVM_VERSION,
        "abi": built["abi"],
        "bytecode": "0x" + built["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + built["evm"]["deployedBytecode"]["object"],
    }


def load_artifact() -> dict:
    return json.loads(artifact_path().read_text())


def write_artifact(artifact: dict) -> Path:
    path = artifact_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":  # python -m chain.compiler: rebuild the committed artifact
    print(write_artifact(compile_registry()))
