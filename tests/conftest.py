"""Shared fixtures: tiny models of every input kind, generated here, and an isolated environment."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The numpy-only fake backend (tests/fake_backend.py) is a plug-in, also in runner subprocesses.
os.environ["EDGEKIT_BACKENDS"] = "fake_backend"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))

INPUT_KINDS = ("keras", "h5", "h5_keras2", "savedmodel", "onnx", "tflite")


# Folders of a user's that only look like edgekit's scratch by name (issue #25): every test runs with
# them in its $TMPDIR, and they must be intact after it (convert, tune, --target all, interrupts).
USER_SCRATCH_LOOKALIKES = ("edgekit-2024-06-results", "edgekit-1-1-keep")


def user_lookalikes(directory: Path) -> str:
    """Create the look-alike user folders in `directory`; returns their digest."""
    for name in USER_SCRATCH_LOOKALIKES:
        (directory / name).mkdir(exist_ok=True)
        (directory / name / "results.csv").write_text(f"{name}: a user's file\n")
    return lookalikes_digest(directory)


def lookalikes_digest(directory: Path) -> str:
    return "".join(tree_digest(directory / name) if (directory / name).is_dir() else "gone"
                   for name in USER_SCRATCH_LOOKALIKES)


@pytest.fixture(scope="session", autouse=True)
def user_tmpdir() -> Path:
    """The suite's $TMPDIR (set before module- and session-scoped fixtures build models or tune). Made
    like /tmp (sticky, open to all) beside it, not under pytest's private basetemp: tests run services
    as other users in it (PostgreSQL's initdb runs as `postgres`)."""
    import shutil
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="pytest-tmpdir-", dir=tempfile.gettempdir()))
    path.chmod(0o1777)
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(path), str(path)
    user_lookalikes(path)
    yield path
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, tmp_path_factory, user_tmpdir):
    """Every test runs in its own directory with its own cache and no user profile path, and a $TMPDIR
    holding user folders that look like edgekit scratch by name (checked untouched afterwards)."""
    monkeypatch.chdir(tmp_path)
    before = user_lookalikes(user_tmpdir)
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "edgekit-cache"))
    monkeypatch.delenv("EDGEKIT_TARGETS_PATH", raising=False)
    # The provisioned aarch64 environment is kept between runs (keyed by runtime versions).
    monkeypatch.setenv("EDGEKIT_EMULATION_CACHE", os.environ.get("EDGEKIT_EMULATION_CACHE",
                                                               str(Path.home() / ".cache" / "edgekit" / "emulation")))
    yield
    assert lookalikes_digest(user_tmpdir) == before, "a user's folder in $TMPDIR was removed or changed"


def default_signals() -> None:
    """preexec_fn for a child a test will signal: SIGINT/SIGTERM/SIGHUP at their defaults, whatever the
    test run inherited (a suite started in the background or under nohup ignores SIGINT or SIGHUP,
    and Python keeps an ignored SIGINT ignored)."""
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()


def tiny_data(n: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) * 10).astype(np.int64) % 4
    return x, y


def build_tiny_keras(keras_module, with_lambda: bool = False):
    """A small NHWC CNN: conv, batchnorm, pooling, dense, softmax."""
    layers = keras_module.layers
    keras_module.utils.set_random_seed(0)
    stack = [keras_module.Input((8, 8, 1), name="image"),
             layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
             layers.BatchNormalization(name="bn"),
             layers.MaxPooling2D(name="pool"),
             layers.Flatten(name="flat")]
    if with_lambda:
        stack.append(layers.Lambda(lambda t: t * 2.0, name="double"))
    stack.append(layers.Dense(4, activation="softmax", name="probs"))
    return keras_module.Sequential(stack, name="tiny")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_keras(models_dir) -> Path:
    import keras
    path = models_dir / "tiny.keras"
    build_tiny_keras(keras).save(path)
    return path


@pytest.fixture(scope="session")
def small_keras(models_dir) -> Path:
    """Big enough (about 38k weights) that quantized sizes are not dominated by container overhead."""
    import keras
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1), name="image"),
                              layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
                              layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
                              layers.MaxPooling2D(name="pool"), layers.Flatten(name="flat"),
                              layers.Dense(64, activation="relu", name="fc"),
                              layers.Dense(4, activation="softmax", name="probs")], name="small")
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = tiny_data(256, seed=1)
    model.fit(x, y, epochs=10, verbose=0)  # trained, so top-1 is not a coin toss between near-equal classes
    path = models_dir / "small.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def make_model(models_dir, tiny_keras):
    """make_model(kind) -> path of a tiny model of that input kind (built once per session)."""
    cache: dict[str, Path] = {"keras": tiny_keras}

    def make(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = BUILDERS[kind](models_dir, tiny_keras)
        return cache[kind]

    return make


def _h5(models_dir, tiny_keras):
    import keras
    path = models_dir / "tiny.h5"
    keras.saving.load_model(tiny_keras).save(path)
    return path


def _h5_keras2(models_dir, tiny_keras):
    import tf_keras  # Keras 2, as older projects saved their models
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Conv2D(4, 3, activation="relu"),
                                 tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(4, activation="softmax")])
    path = models_dir / "tiny_keras2.h5"
    model.save(path)
    return path


def _savedmodel(models_dir, tiny_keras):
    import keras
    path = models_dir / "tiny_savedmodel"
    keras.saving.load_model(tiny_keras).export(str(path), verbose=False)
    return path


def _tflite(models_dir, tiny_keras):
    import keras
    import tensorflow as tf
    path = models_dir / "tiny.tflite"
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.saving.load_model(tiny_keras))
    path.write_bytes(converter.convert())
    return path


def _onnx(models_dir, tiny_keras):
    """A PyTorch-style NCHW ONNX model with a dynamic batch, written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    fc = numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "tiny_nchw",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5])], [w, b, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = models_dir / "tiny_nchw.onnx"
    onnx.save(model, str(path))
    return path


BUILDERS = {"h5": _h5, "h5_keras2": _h5_keras2, "savedmodel": _savedmodel, "tflite": _tflite, "onnx": _onnx}


@pytest.fixture(scope="session")
def tiny_eval(models_dir) -> Path:
    x, y = tiny_data()
    path = models_dir / "tiny_eval.npz"
    np.savez(path, x=x, y=y)
    return path


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (Debian keeps them off PATH), newest version first."""
    import shutil
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name),
                   reverse=True) if Path("/usr/lib/postgresql").is_dir() else []
    initdb = found[0] if found else (Path(shutil.which("initdb")) if shutil.which("initdb") else None)
    return initdb.parent if initdb else None


def free_tcp_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL server in a temp dir (as the `postgres` user when we are root)."""

    def __init__(self, bin_dir: Path):
        import tempfile
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="edgekit-pg-", dir="/tmp"))  # not $TMPDIR (the suite sets it under pytest's 0700 dir): initdb's user must reach it
        self.as_user = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            import pwd
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = 0

    def _run(self, *argv, check=True):
        import subprocess
        return subprocess.run([*self.as_user, *map(str, argv)], capture_output=True, text=True, check=check,
                              timeout=120)

    def start(self) -> str:
        if not (self.dir / "data").is_dir():
            self._run(self.bin / "initdb", "-D", self.dir / "data", "-A", "trust", "-U", "edgekit", "--no-sync")
        self.port = self.port or free_tcp_port()
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-w", "-l", self.dir / "log", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        return self.url

    def create_database(self, name: str) -> str:
        self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "edgekit", name)
        return f"postgresql://edgekit@127.0.0.1:{self.port}/{name}"

    @property
    def url(self) -> str:
        return f"postgresql://edgekit@127.0.0.1:{self.port}/postgres"

    def stop(self, mode: str = "fast") -> None:
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-w", "-m", mode, "stop", check=False)

    def remove(self) -> None:
        import shutil
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (installed by `make setup`: requirements/apt.txt)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server programs not found (apt-get install postgresql, or `make setup`)")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on loopback with a throwaway key. It answers on two ports, two "devices" of one
    machine: `url` (temp dir /tmp) and `url_b` (its own temp dir, so its own device lock)."""
    import getpass
    import socket
    import subprocess
    import time
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    (d / "device-b").mkdir()
    port, port_b = free_tcp_port(), free_tcp_port()
    config = d / "sshd_config"
    config.write_text(f"Port {port}\nPort {port_b}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
                      f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\nStrictModes no\n"
                      "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                      "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
                      f"Match LocalPort {port_b}\n    SetEnv TMPDIR={d / 'device-b'}\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            for p in (port, port_b):
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    user = getpass.getuser()
    yield {"url": f"ssh://{user}@127.0.0.1:{port}", "url_b": f"ssh://{user}@127.0.0.1:{port_b}", "dir": d,
           "port": port, "tmp_b": d / "device-b"}
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def ssh_env(sshd, monkeypatch):
    import sys
    monkeypatch.setenv("EDGEKIT_SSH_KEY", str(sshd["dir"] / "client_key"))
    monkeypatch.setenv("EDGEKIT_SSH_KNOWN_HOSTS", str(sshd["dir"] / "known_hosts"))
    monkeypatch.setenv("EDGEKIT_REMOTE_PYTHON", sys.executable)
    return sshd
