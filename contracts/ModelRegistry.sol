// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";

/// @title ModelRegistry
/// @notice Provenance of models made by kdledger: data nodes publish the hashes of the weights they
/// trained on private data, a distiller commits a student with the hashes it came from, and data nodes
/// attest how well a model does on their own data. Only hashes and numbers are stored, never weights.
/// @dev Data nodes never send transactions: they sign EIP-712 messages that a RELAYER submits. Each
/// signature carries the signer's nonce and a deadline, so it can be used once and only in time.
/// A data node's role and nonce share one storage slot (`_nodes`), so a signed record costs one cold read
/// and one write of a live slot (5 000 gas) instead of two reads and, for a node's first record, the
/// 22 100 gas of filling an empty nonce slot; `hasRole`, `nonces` and the role events behave as
/// OpenZeppelin's AccessControl and Nonces do. OpenZeppelin's Multicall lets one account batch its own
/// calls (the admin's grants to a thousand nodes in a few transactions).
/// For very large federations a relayer may commit a phase's signed publications as one Merkle root
/// (`commitPublications`, a few hundred gas per record): each leaf is the whole signed publication, so
/// anyone holding a leaf and its proof can check its inclusion and its signature (`publicationIncluded`),
/// a student or aggregate may name the root as a source, and a node attests through the root with its
/// leaf, checked again on-chain (`attestBatchThroughRoots`).
contract ModelRegistry is AccessControl, EIP712, Multicall {
    bytes32 public constant DATA_NODE_ROLE = keccak256("DATA_NODE_ROLE");
    bytes32 public constant DISTILLER_ROLE = keccak256("DISTILLER_ROLE");
    bytes32 public constant RELAYER_ROLE = keccak256("RELAYER_ROLE");

    /// Kinds a data node may publish (1..3); a student (4) comes only from commitStudent, an aggregate (5)
    /// (a model the coordinator computed from registered ones) only from registerAggregate.
    uint8 public constant KIND_TEACHER = 1;
    uint8 public constant KIND_EBM = 2;
    uint8 public constant KIND_GENERATOR = 3;
    uint8 public constant KIND_STUDENT = 4;
    uint8 public constant KIND_AGGREGATE = 5;
    /// A Merkle root of data nodes' signed publications, committed by a relayer (commitPublications).
    uint8 public constant KIND_BATCH = 6;

    bytes32 private constant PUBLISH_TYPEHASH = keccak256(
        "Publish(address node,bytes32 modelHash,uint8 kind,uint32 round,bytes32 runId,string uri,uint256 nonce,uint256 deadline)"
    );
    bytes32 private constant ATTEST_TYPEHASH = keccak256(
        "Attest(address node,bytes32 modelHash,bytes32 runId,uint16 accuracyBps,uint32 numExamples,uint256 nonce,uint256 deadline)"
    );

    /// A data node's signed publication of a weights hash.
    struct Publication {
        address node;
        bytes32 modelHash;
        uint8 kind;
        uint32 round;
        bytes32 runId;
        string uri;
        uint256 nonce;
        uint256 deadline;
    }

    /// A data node's signed accuracy of a registered model on its private test split.
    struct Attestation {
        address node;
        bytes32 modelHash;
        bytes32 runId;
        uint16 accuracyBps;
        uint32 numExamples;
        uint256 nonce;
        uint256 deadline;
    }

    /// One node's part of a `registerTeachers` batch: the Publication fields that differ between nodes, and
    /// the node's EIP-2098 compact signature (r, and s with the parity of y in its top bit) over the
    /// Publication they make with the batch's runId, round, uri and deadline.
    struct BatchedPublication {
        address node;
        bytes32 modelHash;
        uint8 kind;
        uint256 nonce;
        bytes32 r;
        bytes32 vs;
    }

    /// One node's part of an `attestBatch` batch, as BatchedPublication is of a publication batch.
    struct BatchedAttestation {
        address node;
        bytes32 modelHash;
        uint16 accuracyBps;
        uint32 numExamples;
        uint256 nonce;
        bytes32 r;
        bytes32 vs;
    }

    /// A data node's signed publication as a leaf of a committed root: the Publication it signed, with its
    /// uri as keccak256, and its EIP-2098 compact signature. Leaf hash: keccak256(keccak256(abi.encode(leaf))),
    /// OpenZeppelin's standard leaf (hashed twice, so that no inner node of a tree can pass for a leaf).
    struct PublicationLeaf {
        address node;
        bytes32 modelHash;
        uint8 kind;
        uint32 round;
        bytes32 runId;
        bytes32 uriHash;
        uint256 nonce;
        uint256 deadline;
        bytes32 r;
        bytes32 vs;
    }

    /// One storage slot per model: who registered it, as what, in which round and block.
    struct Model {
        address owner;
        uint8 kind;
        uint32 round;
        uint40 blockNumber;
    }

    /// What a student was made from and how.
    struct Lineage {
        bytes32 configHash;
        uint64 sampleCount;
        string method;
        bytes32[] teacherHashes;
    }

    /// One storage slot per (model, node) attestation.
    struct Accuracy {
        uint16 accuracyBps;
        uint32 numExamples;
        uint40 blockNumber;
    }

    /// Per account: its nonce shifted left by one, bit 0 set while it holds DATA_NODE_ROLE. Revoking the
    /// role keeps the nonce, so signatures made before a revocation cannot be replayed after a new grant.
    mapping(address account => uint256) private _nodes;
    mapping(bytes32 modelHash => Model) private _models;
    mapping(bytes32 studentHash => Lineage) private _lineages;
    mapping(bytes32 modelHash => mapping(address node => Accuracy)) private _accuracies;
    mapping(bytes32 modelHash => address[]) private _attesters;

    /// A data node published weights (a teacher, an energy model or a generator).
    event TeacherRegistered(
        bytes32 indexed modelHash, address indexed node, bytes32 indexed runId, uint8 kind, uint32 round, string uri
    );
    /// A distiller committed a student distilled from registered models.
    event StudentCommitted(
        bytes32 indexed modelHash,
        address indexed distiller,
        bytes32 indexed runId,
        bytes32[] teacherHashes,
        string method,
        bytes32 configHash,
        uint64 sampleCount,
        string uri
    );
    /// The coordinator registered a model it computed from registered ones (a FedAvg aggregate, an ensemble).
    event AggregateRegistered(
        bytes32 indexed modelHash,
        address indexed coordinator,
        bytes32 indexed runId,
        uint32 round,
        bytes32[] sourceHashes,
        string method,
        uint64 exampleCount,
        string uri
    );
    /// A relayer committed the Merkle root of `count` signed publications of one run and round.
    event PublicationsCommitted(
        bytes32 indexed root, address indexed relayer, bytes32 indexed runId, uint32 round, uint32 count, string uri
    );
    /// A data node measured a registered model on its own private test split.
    event AccuracyAttested(
        bytes32 indexed modelHash, address indexed node, bytes32 indexed runId, uint16 accuracyBps, uint32 numExamples
    );

    /// @notice The signature's nonce is not the signer's current one (OpenZeppelin's Nonces error): a replay,
    /// or a message signed out of order.
    error InvalidAccountNonce(address account, uint256 currentNonce);
    /// @notice A signed message was relayed after its deadline.
    error SignatureExpired(uint256 deadline);
    /// @notice The signer named in a message does not hold the role the call needs (DATA_NODE).
    error SignerLacksRole(address signer, bytes32 role);
    /// @notice The signature recovers to another address than the node the message names.
    error InvalidSigner(address recovered, address expected);
    /// @notice The hash is registered already; a record is never overwritten.
    error ModelAlreadyRegistered(bytes32 modelHash);
    /// @notice The hash is not registered (a source of a student or aggregate, or an attested model).
    error UnknownModel(bytes32 modelHash);
    /// @notice A data node may publish only teachers, EBMs and generators (kinds 1 to 3).
    error InvalidKind(uint8 kind);
    /// @notice The zero hash names no file.
    error ZeroHash();
    /// @notice A student or an aggregate must come from at least one registered model.
    error EmptyLineage();
    /// @notice An accuracy is at most 10 000 basis points.
    error AccuracyOutOfRange(uint16 accuracyBps);
    /// @notice A node attests a model's accuracy once.
    error AlreadyAttested(bytes32 modelHash, address node);
    /// @notice The path does not lead from the model, through its sources, to a model the node registered:
    /// only nodes whose data went into a model may attest its accuracy.
    error NotInLineage(bytes32 modelHash, address node);
    /// @notice A batch's arrays (attestations and paths) differ in length.
    error BatchLengthMismatch(uint256 records, uint256 other);
    /// @notice A root of publications must hold at least one.
    error EmptyBatch();

    /// @param admin The account that may grant and revoke every role.
    constructor(address admin) EIP712("kdledger ModelRegistry", "1") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Registers a weights hash that a data node signed; called by a relayer.
    /// @param p The publication the node signed (its nonce must be the node's current one).
    /// @param signature The node's 65-byte EIP-712 signature over `p`.
    function registerTeacher(Publication calldata p, bytes calldata signature) external onlyRole(RELAYER_ROLE) {
        _checkSigned(p.node, p.deadline, p.nonce);
        bytes32 digest =
            _publishDigest(p.node, p.modelHash, p.kind, p.round, p.runId, keccak256(bytes(p.uri)), p.nonce, p.deadline);
        _checkSigner(ECDSA.recover(digest, signature), p.node);
        _recordPublication(p.modelHash, p.node, p.kind, p.round, p.runId, p.uri);
    }

    /// @notice Registers many nodes' signed publications of one run and round in one transaction: each
    /// signature is checked over the Publication its fields make with the batch's shared ones, and each
    /// record and event is the one `registerTeacher` makes. One that fails reverts the batch with its error.
    /// @param runId The run every publication names.
    /// @param round The round every publication names.
    /// @param uri The uri every publication names.
    /// @param deadline The deadline every publication names.
    /// @param ps Each node's part, in the order of each node's nonces.
    function registerTeachers(
        bytes32 runId,
        uint32 round,
        string calldata uri,
        uint256 deadline,
        BatchedPublication[] calldata ps
    ) external onlyRole(RELAYER_ROLE) {
        bytes32 uriHash = keccak256(bytes(uri));
        for (uint256 i = 0; i < ps.length; ++i) {
            BatchedPublication calldata p = ps[i];
            _checkBatchedPublication(p, runId, round, uriHash, deadline);
            _recordPublication(p.modelHash, p.node, p.kind, round, runId, uri);
        }
    }

    /// @notice Commits the Merkle root of many data nodes' signed publications of one run and round, in place
    /// of registering each: the root becomes a record of kind KIND_BATCH, owned by the relayer, that students
    /// and aggregates may name as a source. The contract checks no leaf here: each leaf is checked by whoever
    /// reads it (`publicationIncluded`), or on-chain when its node attests through the root.
    /// @param root The root of the tree whose leaves are the publications (see PublicationLeaf); nodes sorted
    /// pairwise before hashing, as OpenZeppelin's MerkleProof expects.
    /// @param runId The run the publications belong to.
    /// @param round The round every leaf names.
    /// @param count How many leaves the tree holds.
    /// @param uri Where the leaves and their proofs can be fetched.
    function commitPublications(bytes32 root, bytes32 runId, uint32 round, uint32 count, string calldata uri)
        external
        onlyRole(RELAYER_ROLE)
    {
        if (count == 0) revert EmptyBatch();
        _record(root, msg.sender, KIND_BATCH, round);
        emit PublicationsCommitted(root, msg.sender, runId, round, count, uri);
    }

    /// @notice Commits a student distilled from registered models; called by the distiller itself.
    /// @param modelHash SHA-256 of the student's weights file.
    /// @param runId The run the student belongs to.
    /// @param teacherHashes The registered models it was distilled from.
    /// @param method The distillation method's name (e.g. "genkd").
    /// @param configHash Hash of the exact distillation configuration.
    /// @param sampleCount Number of synthetic samples the student was trained on.
    /// @param uri Where the weights can be fetched.
    function commitStudent(
        bytes32 modelHash,
        bytes32 runId,
        bytes32[] calldata teacherHashes,
        string calldata method,
        bytes32 configHash,
        uint64 sampleCount,
        string calldata uri
    ) external onlyRole(DISTILLER_ROLE) {
        _recordDerived(modelHash, KIND_STUDENT, 0, teacherHashes, method, configHash, sampleCount);
        emit StudentCommitted(modelHash, msg.sender, runId, teacherHashes, method, configHash, sampleCount, uri);
    }

    /// @notice Registers a teacher the coordinator computed from registered models: a FedAvg round's
    /// aggregate of the nodes' updates, or an ensemble of their teachers; called by a relayer.
    /// @param modelHash SHA-256 of the computed model's weights file.
    /// @param runId The run it belongs to.
    /// @param round The federated round it closes (0 for one-shot aggregates).
    /// @param sourceHashes The registered models it was computed from.
    /// @param method How it was computed (e.g. "FedAvg", "ensemble").
    /// @param exampleCount Training examples behind the sources, summed (stored as the lineage's sampleCount).
    /// @param uri Where the weights can be fetched.
    function registerAggregate(
        bytes32 modelHash,
        bytes32 runId,
        uint32 round,
        bytes32[] calldata sourceHashes,
        string calldata method,
        uint64 exampleCount,
        string calldata uri
    ) external onlyRole(RELAYER_ROLE) {
        _recordDerived(modelHash, KIND_AGGREGATE, round, sourceHashes, method, bytes32(0), exampleCount);
        emit AggregateRegistered(modelHash, msg.sender, runId, round, sourceHashes, method, exampleCount, uri);
    }

    /// @notice Records the accuracy a data node signed for a registered model; called by a relayer. Only a
    /// node whose data went into the model may attest it: `path` leads from the model through its sources
    /// (`lineageOf(h).teacherHashes[path[i]]` at each step) to a model the node registered itself.
    /// @param a The attestation the node signed (its nonce must be the node's current one).
    /// @param signature The node's 65-byte EIP-712 signature over `a`.
    /// @param path Indexes into the sources at each step; empty when the node registered the model itself.
    function attestAccuracy(Attestation calldata a, bytes calldata signature, uint256[] calldata path)
        external
        onlyRole(RELAYER_ROLE)
    {
        _checkSigned(a.node, a.deadline, a.nonce);
        bytes32 digest =
            _attestDigest(a.node, a.modelHash, a.runId, a.accuracyBps, a.numExamples, a.nonce, a.deadline);
        _checkSigner(ECDSA.recover(digest, signature), a.node);
        _recordAccuracy(a.modelHash, a.node, a.runId, a.accuracyBps, a.numExamples, path);
    }

    /// @notice Records many nodes' signed attestations of one run in one transaction: each signature is
    /// checked over the Attestation its fields make with the batch's shared ones, and each record and event
    /// is the one `attestAccuracy` makes. One that fails reverts the batch with its error.
    /// @param runId The run every attestation names.
    /// @param deadline The deadline every attestation names.
    /// @param atts Each node's part, in the order of each node's nonces.
    /// @param paths The lineage path of the attestation at the same index (see `attestAccuracy`).
    function attestBatch(
        bytes32 runId,
        uint256 deadline,
        BatchedAttestation[] calldata atts,
        uint256[][] calldata paths
    ) external onlyRole(RELAYER_ROLE) {
        if (atts.length != paths.length) revert BatchLengthMismatch(atts.length, paths.length);
        for (uint256 i = 0; i < atts.length; ++i) {
            BatchedAttestation calldata a = atts[i];
            _checkBatchedAttestation(a, runId, deadline);
            _recordAccuracy(a.modelHash, a.node, runId, a.accuracyBps, a.numExamples, paths[i]);
        }
    }

    /// @notice Records many attestations of models whose lineage reaches a root of publications: each path
    /// leads from the model to a root (as in `attestAccuracy`, at least one step), and the attesting node's own
    /// leaf in that root, of the same run, shows that the node's data went into the model: the leaf is checked
    /// as `publicationIncluded` checks it (proof, round, kind, the node's signature). Each attestation's
    /// signature is checked as `attestBatch` does.
    /// @param runId The run every attestation names.
    /// @param deadline The deadline every attestation names.
    /// @param atts Each node's part, in the order of each node's nonces.
    /// @param paths The lineage path of the attestation at the same index, ending at a root.
    /// @param leaves The attesting node's leaf in the root its path reaches.
    /// @param proofs The leaf's Merkle proof in that root.
    function attestBatchThroughRoots(
        bytes32 runId,
        uint256 deadline,
        BatchedAttestation[] calldata atts,
        uint256[][] calldata paths,
        PublicationLeaf[] calldata leaves,
        bytes32[][] calldata proofs
    ) external onlyRole(RELAYER_ROLE) {
        if (atts.length != paths.length) revert BatchLengthMismatch(atts.length, paths.length);
        if (atts.length != leaves.length) revert BatchLengthMismatch(atts.length, leaves.length);
        if (atts.length != proofs.length) revert BatchLengthMismatch(atts.length, proofs.length);
        // A node attesting several models through one root sends its leaf with each; the leaf and root the
        // previous attestation proved are not proven again (its proof and signature were checked just now).
        bytes32 provenLeaf;
        bytes32 provenRoot;
        for (uint256 i = 0; i < atts.length; ++i) {
            BatchedAttestation calldata a = atts[i];
            _checkBatchedAttestation(a, runId, deadline);
            if (a.accuracyBps > 10_000) revert AccuracyOutOfRange(a.accuracyBps);
            if (paths[i].length == 0) revert NotInLineage(a.modelHash, a.node); // a root is no model to attest
            bytes32 root = _walkLineage(a.modelHash, a.node, paths[i]);
            PublicationLeaf calldata leaf = leaves[i];
            if (leaf.node != a.node || leaf.runId != runId) revert NotInLineage(a.modelHash, a.node);
            bytes32 leafHash = publicationLeafHash(leaf);
            if (leafHash != provenLeaf || root != provenRoot) {
                if (!_leafIncluded(root, leaf, leafHash, proofs[i])) revert NotInLineage(a.modelHash, a.node);
                (provenLeaf, provenRoot) = (leafHash, root);
            }
            _storeAccuracy(a.modelHash, a.node, runId, a.accuracyBps, a.numExamples);
        }
    }

    /// @notice Whether `leaf` is a publication in the committed root `root`: the root is a KIND_BATCH record of
    /// the leaf's round, the proof leads from the leaf to it, the kind is one a node may publish, and the
    /// signature recovers to the leaf's node. Whether that node held DATA_NODE_ROLE is `hasRole`'s to say.
    /// @param root A root committed with commitPublications.
    /// @param leaf The publication and its signature.
    /// @param proof The sibling hashes from the leaf up to the root.
    function publicationIncluded(bytes32 root, PublicationLeaf calldata leaf, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        return _leafIncluded(root, leaf, publicationLeafHash(leaf), proof);
    }

    /// @notice The hash a publication leaf has in a tree: keccak256(keccak256(abi.encode(leaf))).
    /// @param leaf The publication and its signature.
    function publicationLeafHash(PublicationLeaf calldata leaf) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(leaf))));
    }

    function _leafIncluded(bytes32 root, PublicationLeaf calldata leaf, bytes32 leafHash, bytes32[] calldata proof)
        private
        view
        returns (bool)
    {
        Model memory batch = _models[root];
        if (batch.kind != KIND_BATCH || batch.round != leaf.round) return false;
        if (leaf.kind == 0 || leaf.kind > KIND_GENERATOR) return false;
        if (!MerkleProof.verifyCalldata(proof, root, leafHash)) return false;
        bytes32 digest = _publishDigest(
            leaf.node, leaf.modelHash, leaf.kind, leaf.round, leaf.runId, leaf.uriHash, leaf.nonce, leaf.deadline
        );
        (address recovered, ECDSA.RecoverError failure,) = ECDSA.tryRecover(digest, leaf.r, leaf.vs);
        return failure == ECDSA.RecoverError.NoError && recovered == leaf.node;
    }

    /// @notice The record of a model; `kind` is 0 when the hash is not registered.
    /// @param modelHash SHA-256 of the weights file.
    function modelOf(bytes32 modelHash) external view returns (Model memory) {
        return _models[modelHash];
    }

    /// @notice How a student or an aggregate was made: configuration hash, sample count, method and sources.
    /// @param studentHash SHA-256 of the student's weights file.
    function lineageOf(bytes32 studentHash) external view returns (Lineage memory) {
        return _lineages[studentHash];
    }

    /// @notice The accuracy `node` attested for `modelHash` (blockNumber 0: none).
    /// @param modelHash SHA-256 of the weights file.
    /// @param node The data node's address.
    function accuracyOf(bytes32 modelHash, address node) external view returns (Accuracy memory) {
        return _accuracies[modelHash][node];
    }

    /// @notice Every data node that attested an accuracy for `modelHash`, in order.
    /// @param modelHash SHA-256 of the weights file.
    function attestersOf(bytes32 modelHash) external view returns (address[] memory) {
        return _attesters[modelHash];
    }

    /// @notice Whether `account` holds `role`; DATA_NODE_ROLE is kept in the account's node slot.
    /// @param role The role.
    /// @param account The account.
    function hasRole(bytes32 role, address account) public view override returns (bool) {
        if (role == DATA_NODE_ROLE) return _nodes[account] & 1 == 1;
        return super.hasRole(role, account);
    }

    /// @notice The nonce the next message `owner` signs must carry.
    /// @param owner The signer.
    function nonces(address owner) external view returns (uint256) {
        return _nodes[owner] >> 1;
    }

    /// @notice The EIP-712 domain separator that signatures for this contract must use.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function _publishDigest(
        address node,
        bytes32 modelHash,
        uint8 kind,
        uint32 round,
        bytes32 runId,
        bytes32 uriHash,
        uint256 nonce,
        uint256 deadline
    ) private view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(PUBLISH_TYPEHASH, node, modelHash, kind, round, runId, uriHash, nonce, deadline))
        );
    }

    function _attestDigest(
        address node,
        bytes32 modelHash,
        bytes32 runId,
        uint16 accuracyBps,
        uint32 numExamples,
        uint256 nonce,
        uint256 deadline
    ) private view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(ATTEST_TYPEHASH, node, modelHash, runId, accuracyBps, numExamples, nonce, deadline))
        );
    }

    function _checkBatchedPublication(
        BatchedPublication calldata p,
        bytes32 runId,
        uint32 round,
        bytes32 uriHash,
        uint256 deadline
    ) private {
        _checkSigned(p.node, deadline, p.nonce);
        bytes32 digest = _publishDigest(p.node, p.modelHash, p.kind, round, runId, uriHash, p.nonce, deadline);
        _checkSigner(ECDSA.recover(digest, p.r, p.vs), p.node);
    }

    function _checkBatchedAttestation(BatchedAttestation calldata a, bytes32 runId, uint256 deadline) private {
        _checkSigned(a.node, deadline, a.nonce);
        bytes32 digest = _attestDigest(a.node, a.modelHash, runId, a.accuracyBps, a.numExamples, a.nonce, deadline);
        _checkSigner(ECDSA.recover(digest, a.r, a.vs), a.node);
    }

    function _recordPublication(
        bytes32 modelHash,
        address node,
        uint8 kind,
        uint32 round,
        bytes32 runId,
        string calldata uri
    ) private {
        if (kind == 0 || kind > KIND_GENERATOR) revert InvalidKind(kind);
        _record(modelHash, node, kind, round);
        emit TeacherRegistered(modelHash, node, runId, kind, round, uri);
    }

    function _recordAccuracy(
        bytes32 modelHash,
        address node,
        bytes32 runId,
        uint16 accuracyBps,
        uint32 numExamples,
        uint256[] calldata path
    ) private {
        if (accuracyBps > 10_000) revert AccuracyOutOfRange(accuracyBps);
        if (_models[_walkLineage(modelHash, node, path)].owner != node) revert NotInLineage(modelHash, node);
        _storeAccuracy(modelHash, node, runId, accuracyBps, numExamples);
    }

    /// The model `path` reaches from `modelHash` through each step's sources.
    function _walkLineage(bytes32 modelHash, address node, uint256[] calldata path) private view returns (bytes32) {
        if (_models[modelHash].kind == 0) revert UnknownModel(modelHash);
        bytes32 reached = modelHash;
        for (uint256 i = 0; i < path.length; ++i) {
            bytes32[] storage sources = _lineages[reached].teacherHashes;
            if (path[i] >= sources.length) revert NotInLineage(modelHash, node);
            reached = sources[path[i]];
        }
        return reached;
    }

    // The caller has checked the range and the lineage.
    function _storeAccuracy(bytes32 modelHash, address node, bytes32 runId, uint16 accuracyBps, uint32 numExamples)
        private
    {
        if (_accuracies[modelHash][node].blockNumber != 0) revert AlreadyAttested(modelHash, node);
        _accuracies[modelHash][node] = Accuracy(accuracyBps, numExamples, uint40(block.number));
        _attesters[modelHash].push(node);
        emit AccuracyAttested(modelHash, node, runId, accuracyBps, numExamples);
    }

    function _grantRole(bytes32 role, address account) internal override returns (bool) {
        if (role != DATA_NODE_ROLE) return super._grantRole(role, account);
        uint256 slot = _nodes[account];
        if (slot & 1 == 1) return false;
        _nodes[account] = slot | 1;
        emit RoleGranted(role, account, _msgSender());
        return true;
    }

    function _revokeRole(bytes32 role, address account) internal override returns (bool) {
        if (role != DATA_NODE_ROLE) return super._revokeRole(role, account);
        uint256 slot = _nodes[account];
        if (slot & 1 == 0) return false;
        _nodes[account] = slot & ~uint256(1);
        emit RoleRevoked(role, account, _msgSender());
        return true;
    }

    // Order matters for clear errors: a replayed signature fails on its nonce, before anything else.
    function _checkSigned(address node, uint256 deadline, uint256 nonce) private {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        uint256 slot = _nodes[node];
        if (slot & 1 == 0) revert SignerLacksRole(node, DATA_NODE_ROLE);
        if (slot >> 1 != nonce) revert InvalidAccountNonce(node, slot >> 1);
        _nodes[node] = slot + 2;
    }

    function _checkSigner(address recovered, address expected) private pure {
        if (recovered != expected) revert InvalidSigner(recovered, expected);
    }

    function _recordDerived(
        bytes32 modelHash,
        uint8 kind,
        uint32 round,
        bytes32[] calldata sources,
        string calldata method,
        bytes32 configHash,
        uint64 sampleCount
    ) private {
        if (sources.length == 0) revert EmptyLineage();
        for (uint256 i = 0; i < sources.length; ++i) {
            if (_models[sources[i]].kind == 0) revert UnknownModel(sources[i]);
        }
        _record(modelHash, msg.sender, kind, round);
        Lineage storage lineage = _lineages[modelHash];
        lineage.configHash = configHash;
        lineage.sampleCount = sampleCount;
        lineage.method = method;
        lineage.teacherHashes = sources;
    }

    function _record(bytes32 modelHash, address owner, uint8 kind, uint32 round) private {
        if (modelHash == bytes32(0)) revert ZeroHash();
        if (_models[modelHash].kind != 0) revert ModelAlreadyRegistered(modelHash);
        _models[modelHash] = Model(owner, kind, round, uint40(block.number));
    }
}
