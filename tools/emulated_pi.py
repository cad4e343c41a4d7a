"""An emulated Raspberry Pi: Debian 12 arm64 under ``qemu-system-aarch64``, reachable by SSH.

A Pi 4 runs Raspberry Pi OS (Debian 12, Python 3.11) on Cortex-A72 cores; this builds that
software stack from Debian's packages and PyPI's aarch64 wheels and boots it on the emulated
core (``-M virt -cpu cortex-a72``), so that ``ofa bench``, ``ofa lut build``, ``ofa deploy``
and ``ofa run`` can be tried against an ARM device without one. Emulated time is hundreds of
times slower than a Pi and means nothing as a Pi's speed: the device reports itself as
``emulated`` (:mod:`deploy.ontarget.facts`) and every table and report measured there says so.

    python tools/emulated_pi.py build     # once, ~25 min (debootstrap's second stage in the guest)
    python tools/emulated_pi.py start     # ~20 s to SSH; prints the --target ... arguments
    python tools/emulated_pi.py status    # running or not, and the same arguments
    python tools/emulated_pi.py stop

How it is built (every step cached in ``--dir``, default ``$OFA_PI_DIR`` or
``~/.cache/ofa-edge/emulated-pi``; a rerun continues where a step was interrupted):

1. ``debootstrap --foreign --arch=arm64`` (first stage, on this machine; no binfmt_misc
   needed) with Python 3.11, openssh-server, the arm64 kernel and busybox;
2. ``pip download --platform manylinux_*_aarch64 --python-version 3.11 --only-binary=:all:``
   of the ``device`` extra at the versions pinned in ``constraints.txt``;
3. a busybox initrd with the kernel's virtio and ext4 modules (Debian's arm64 kernel has them
   as modules) whose ``/init`` mounts ``/dev/vda`` and switches to Debian's systemd;
4. an ext4 image made from the folder (``mke2fs -d``, no loop device or root mount), booted
   once to run debootstrap's second stage, the network and SSH set-up and the venv install
   inside the guest, then powered off;
5. ``start`` boots a copy-on-write overlay of that image (``qemu-img -b``) with SSH forwarded
   to ``127.0.0.1:PORT`` and waits until a login works.

Needs (Debian packages): qemu-system-arm, qemu-utils, debootstrap, e2fsprogs, cpio,
openssh-client. Nothing is downloaded but Debian packages and PyPI wheels.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = "bookworm"  # Raspberry Pi OS 12 is Debian 12
PACKAGES = ["systemd-sysv", "udev", "kmod", "openssh-server", "python3", "python3-venv",
            "iproute2", "busybox-static", "linux-image-arm64", "procps"]
DEVICE_EXTRA = ["numpy", "onnxruntime", "ai-edge-litert"]  # pyproject's `device` extra
AARCH64 = ["manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_27_aarch64",
           "manylinux_2_28_aarch64"]
# The initrd's modules, in load order (dependencies first; a module built in is skipped).
INITRD_MODULES = ["virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                  "virtio_pci", "virtio_blk", "crc16", "crc32c_generic", "libcrc32c",
                  "mbcache", "jbd2", "ext4"]
VENV = "/opt/ofa-venv"
HOST_TOOLS = {"qemu-system-aarch64": "qemu-system-arm", "qemu-img": "qemu-utils",
              "debootstrap": "debootstrap", "mke2fs": "e2fsprogs", "debugfs": "e2fsprogs",
              "cpio": "cpio", "ssh": "openssh-client", "ssh-keygen": "openssh-client"}

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || { echo "ofa-pi: cannot mount /dev/vda"; sh; }
if grep -q ofa.provision /proc/cmdline; then
    for d in proc sys dev; do mkdir -p /newroot/$d; mount --bind /$d /newroot/$d; done
    chroot /newroot /bin/sh /root/ofa-provision.sh && echo "ofa-pi: provisioned"
    sync; umount /newroot/proc /newroot/sys /newroot/dev; umount /newroot; sync
    poweroff -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""

PROVISION = """#!/bin/sh
set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
export INITRD=No  # the busybox initrd boots it: no initramfs (~20 min under emulation)
if [ -x /debootstrap/debootstrap ]; then
    /debootstrap/debootstrap --second-stage
fi
echo ofa-pi > /etc/hostname
echo "/dev/vda / ext4 rw,relatime 0 1" > /etc/fstab
printf '[Match]\\nName=e*\\n[Network]\\nDHCP=yes\\n' > /etc/systemd/network/20-wired.network
systemctl enable systemd-networkd ssh
systemctl mask getty@tty1.service
mkdir -p /root/.ssh && chmod 700 /root/.ssh
cp /root/ofa-authorized_keys /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
rm -f /etc/ssh/ssh_host_*
cp /root/ofa-host-key /etc/ssh/ssh_host_ed25519_key
cp /root/ofa-host-key.pub /etc/ssh/ssh_host_ed25519_key.pub
chmod 600 /etc/ssh/ssh_host_ed25519_key
echo "HostKey /etc/ssh/ssh_host_ed25519_key" > /etc/ssh/sshd_config.d/ofa.conf
echo "UseDNS no" >> /etc/ssh/sshd_config.d/ofa.conf
python3 -m venv VENV
VENV/bin/pip install --no-index --no-compile --find-links /root/wheels \\
    -r /root/wheels/requirements.txt
rm -rf /root/wheels /var/cache/apt/archives/*.deb
touch /root/.ofa-provisioned
"""


class PiError(RuntimeError):
    """A step of building or starting the emulated Pi failed (message: what and where)."""


def _run(cmd: list[str], log: Path | None = None, **kw) -> None:
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    finally:
        if log:
            out.close()
    if res.returncode:
        where = f" (log: {log})" if log else ""
        raise PiError(f"{cmd[0]} failed with exit code {res.returncode}{where}")


class EmulatedPi:
    """The cached image and the running VM of one ``--dir``.

    Files: ``base.img`` (the provisioned ext4 image), ``overlay.qcow2`` (what a started VM
    writes), ``Image``/``initrd.gz`` (kernel and busybox initrd), ``id_ed25519`` (login key),
    ``known_hosts``, ``vm.pid``, ``port``, ``console.log``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder).expanduser()
        self.rootfs = self.dir / "rootfs"
        self.base = self.dir / "base.img"
        self.key = self.dir / "id_ed25519"
        self.host_key = self.dir / "host_ed25519"
        self.known_hosts = self.dir / "known_hosts"

    # --- build ------------------------------------------------------------------------------
    def check_host(self) -> None:
        """Raises PiError naming the Debian packages to install when a host tool is missing."""
        missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
        if missing:
            raise PiError(f"missing host tools: apt-get install {' '.join(missing)}")

    def build(self, mirror: str, size: str, cpus: int, memory: int,
              timeout_min: float) -> None:
        """Every build step not yet done (see the module docstring); idempotent."""
        self.check_host()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.base.exists():
            print(f"{self.base} already built")
            return
        log = self.dir / "build.log"
        self._keys()
        self._first_stage(mirror, log)
        self._wheels(log)
        self._initrd()
        self._provision_files()
        self._image(size, log)
        print(f"provisioning in the guest (debootstrap second stage, venv), up to "
              f"{timeout_min:g} min; console: {self.dir / 'console.log'}", flush=True)
        t0 = time.time()
        img = self.dir / "base.img.partial"
        cmd = self._qemu_cmd(img, "raw", cpus, memory, "ofa.provision", port=None)
        console = self.dir / "console.log"
        with console.open("wb") as f:
            try:
                subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_min * 60)
            except subprocess.TimeoutExpired as exc:
                raise PiError(f"provisioning did not finish in {timeout_min:g} min "
                              f"(console: {console})") from exc
        res = subprocess.run(["debugfs", "-R", "stat /root/.ofa-provisioned", str(img)],
                             capture_output=True, text=True)
        if "Inode:" not in res.stdout:
            raise PiError(f"provisioning failed in the guest (console: {console})")
        img.replace(self.base)
        shutil.rmtree(self.rootfs, ignore_errors=True)
        print(f"built {self.base} in {(time.time() - t0) / 60:.1f} min of emulation")

    def _keys(self) -> None:
        for key in (self.key, self.host_key):
            if not key.exists():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ofa-pi",
                      "-f", str(key)])

    def _first_stage(self, mirror: str, log: Path) -> None:
        done = self.dir / "stage1.done"
        if done.exists():
            return
        print("debootstrap --foreign (first stage: download and unpack) ...", flush=True)
        shutil.rmtree(self.rootfs, ignore_errors=True)
        _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
              f"--include={','.join(PACKAGES)}", SUITE, str(self.rootfs), mirror], log)
        done.touch()

    def _wheels(self, log: Path) -> None:
        wheels = self.rootfs / "root" / "wheels"
        req = wheels / "requirements.txt"
        if req.exists():
            return
        print("pip download: the device extra for aarch64, Python 3.11 ...", flush=True)
        wheels.mkdir(parents=True, exist_ok=True)
        plats = [a for p in AARCH64 for a in ("--platform", p)]
        constraints = ROOT / "constraints.txt"
        _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *plats,
              "--python-version", "3.11", "--implementation", "cp", "-d", str(wheels),
              "-c", str(constraints), *DEVICE_EXTRA], log)
        pins = [line.strip() for line in constraints.read_text().splitlines()
                if line.split("==")[0].strip().lower() in DEVICE_EXTRA]
        tmp = req.with_suffix(".partial")
        tmp.write_text("\n".join(pins) + "\n")
        tmp.replace(req)

    def _deb(self, prefix: str) -> Path:
        debs = sorted((self.rootfs / "var/cache/apt/archives").glob(f"{prefix}*_arm64.deb"))
        if not debs:
            raise PiError(f"no {prefix}*.deb in {self.rootfs}/var/cache/apt/archives")
        return debs[-1]

    def _initrd(self) -> None:
        if (self.dir / "initrd.gz").exists():
            return
        print("kernel and busybox initrd ...", flush=True)
        work = self.dir / "initrd-work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        kpkg = [d for d in (self.rootfs / "var/cache/apt/archives").glob(
            "linux-image-*-arm64_*_arm64.deb") if "unsigned" not in d.name]
        if not kpkg:
            raise PiError("no linux-image-*-arm64 package was downloaded")
        kdir, tree = work / "kernel", work / "tree"
        _run(["dpkg-deb", "-x", str(sorted(kpkg)[-1]), str(kdir)])
        _run(["dpkg-deb", "-x", str(self._deb("busybox-static_")), str(work / "busybox")])
        for d in ("bin", "proc", "sys", "dev", "newroot", "lib/modules"):
            (tree / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "busybox/bin/busybox", tree / "bin/busybox")
        vmlinuz = sorted((kdir / "boot").glob("vmlinuz-*"))[-1]
        mods = {}
        for ko in (kdir / "lib/modules").rglob("*.ko*"):
            mods[ko.name.split(".ko")[0].replace("-", "_")] = ko
        order = []
        for name in INITRD_MODULES:
            ko = mods.get(name)
            if ko is None:
                continue  # built into this kernel
            data = ko.read_bytes()
            if ko.name.endswith(".xz"):
                import lzma
                data = lzma.decompress(data)
            elif ko.name.endswith(".zst"):
                data = subprocess.run(["zstd", "-dc", str(ko)], capture_output=True,
                                      check=True).stdout
            (tree / "lib/modules" / f"{name}.ko").write_bytes(data)
            order.append(name)
        (tree / "modules.order").write_text("\n".join(order) + "\n")
        (tree / "init").write_text(INIT)
        (tree / "init").chmod(0o755)
        files = subprocess.run("find . | cpio -o -H newc --quiet", shell=True, cwd=tree,
                               capture_output=True, check=True).stdout
        tmp = self.dir / "initrd.gz.partial"
        tmp.write_bytes(gzip.compress(files))
        raw = vmlinuz.read_bytes()
        (self.dir / "Image").write_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        tmp.replace(self.dir / "initrd.gz")
        shutil.rmtree(work)

    def _provision_files(self) -> None:
        root = self.rootfs
        proc = root / "proc"
        if proc.is_symlink():  # left by the first stage; the guest cannot boot with it
            proc.unlink()
        proc.mkdir(exist_ok=True)
        (root / "root/ofa-provision.sh").write_text(PROVISION.replace("VENV", VENV))
        shutil.copy(self.key.with_suffix(".pub"), root / "root/ofa-authorized_keys")
        shutil.copy(self.host_key, root / "root/ofa-host-key")
        shutil.copy(self.host_key.with_suffix(".pub"), root / "root/ofa-host-key.pub")

    def _image(self, size: str, log: Path) -> None:
        img = self.dir / "base.img.partial"
        img.unlink(missing_ok=True)
        print(f"ext4 image of {size} from the folder (mke2fs -d) ...", flush=True)
        _run(["mke2fs", "-q", "-t", "ext4", "-L", "ofa-pi", "-d", str(self.rootfs), str(img),
              size], log)

    # --- run --------------------------------------------------------------------------------
    def _qemu_cmd(self, disk: Path, fmt: str, cpus: int, memory: int, extra: str,
                  port: int | None) -> list[str]:
        net = "user,id=n0" + (f",hostfwd=tcp:127.0.0.1:{port}-:22" if port else "")
        return ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72",
                "-smp", str(cpus), "-m", str(memory), "-accel", "tcg,thread=multi",
                "-kernel", str(self.dir / "Image"), "-initrd", str(self.dir / "initrd.gz"),
                "-append", f"console=ttyAMA0 root=/dev/vda rw quiet {extra}",
                "-drive", f"file={disk},format={fmt},if=virtio",
                "-netdev", net, "-device", "virtio-net-pci,netdev=n0",
                "-nographic", "-no-reboot"]

    def pid(self) -> int | None:
        """The running VM's process id, or None."""
        try:
            pid = int((self.dir / "vm.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def port(self) -> int:
        return int((self.dir / "port").read_text())

    def start(self, port: int, cpus: int, memory: int, fresh: bool, wait_s: float) -> None:
        """Boot the overlay (a fresh one with ``fresh``) and wait for SSH.

        Raises:
            PiError: not built, the port in use, or no SSH login within ``wait_s`` seconds.
        """
        self.check_host()
        if not self.base.exists():
            raise PiError(f"no image in {self.dir}: run `python tools/emulated_pi.py build`")
        if self.pid():
            print(f"already running (pid {self.pid()})")
            return
        overlay = self.dir / "overlay.qcow2"
        if fresh or not overlay.exists():
            overlay.unlink(missing_ok=True)
            _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                  str(self.base), str(overlay)])
        (self.dir / "port").write_text(str(port))
        self.known_hosts.write_text(f"[127.0.0.1]:{port} "
                                    + (self.host_key.with_suffix('.pub')).read_text())
        cmd = self._qemu_cmd(overlay, "qcow2", cpus, memory, "", port)
        cmd = [c for c in cmd if c != "-nographic"] + [
            "-display", "none", "-serial", f"file:{self.dir / 'console.log'}",
            "-daemonize", "-pidfile", str(self.dir / "vm.pid")]
        _run(cmd, self.dir / "qemu.log")
        t0 = time.time()
        while time.time() - t0 < wait_s:
            if self.ssh_ok():
                print(f"ssh up after {time.time() - t0:.0f} s")
                return
            time.sleep(2)
        raise PiError(f"no SSH login on 127.0.0.1:{port} after {wait_s:g} s "
                      f"(console: {self.dir / 'console.log'})")

    def ssh_ok(self) -> bool:
        """Whether ``ssh root@127.0.0.1 -p PORT true`` succeeds now."""
        res = subprocess.run(["ssh", *self.ssh_args(), "-o", "ConnectTimeout=5",
                              "root@127.0.0.1", "true"], capture_output=True, timeout=30)
        return res.returncode == 0

    def ssh_args(self) -> list[str]:
        return ["-p", str(self.port()), "-i", str(self.key), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes"]

    def stop(self) -> None:
        """Power the VM off (SIGTERM to qemu: the overlay is a scratch disk)."""
        pid = self.pid()
        if pid is None:
            print("not running")
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if self.pid() is None:
                break
            time.sleep(0.1)
        (self.dir / "vm.pid").unlink(missing_ok=True)
        print("stopped")

    def target_args(self) -> str:
        """The ``ofa`` arguments that reach this VM."""
        return (f"--target ssh://root@127.0.0.1:{self.port()} --python {VENV}/bin/python "
                f"--identity {self.key} --known-hosts {self.known_hosts}")


def default_dir() -> Path:
    return Path(os.environ.get("OFA_PI_DIR", "~/.cache/ofa-edge/emulated-pi")).expanduser()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["build", "start", "stop", "status", "args"])
    ap.add_argument("--dir", default=str(default_dir()), help="image cache folder")
    ap.add_argument("--port", type=int, default=2222, help="SSH port on 127.0.0.1")
    ap.add_argument("--cpus", type=int, default=2, help="emulated Cortex-A72 cores")
    ap.add_argument("--memory", type=int, default=2048, help="MiB")
    ap.add_argument("--size", default="4G", help="disk image size (mke2fs)")
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    ap.add_argument("--fresh", action="store_true", help="start: discard the overlay's changes")
    ap.add_argument("--wait", type=float, default=300.0, help="start: seconds to wait for SSH")
    ap.add_argument("--build-timeout", type=float, default=90.0, help="minutes")
    args = ap.parse_args(argv)
    if not 1024 <= args.port <= 65535 or not 1 <= args.cpus <= 8 or not 256 <= args.memory:
        print("emulated_pi: --port 1024-65535, --cpus 1-8, --memory >= 256", file=sys.stderr)
        return 2
    pi = EmulatedPi(args.dir)
    try:
        if args.command == "build":
            pi.build(args.mirror, args.size, args.cpus, args.memory, args.build_timeout)
        elif args.command == "start":
            pi.start(args.port, args.cpus, args.memory, args.fresh, args.wait)
            print(pi.target_args())
        elif args.command == "stop":
            pi.stop()
        else:
            running = pi.pid() is not None
            if args.command == "status":
                print("running" if running else ("stopped" if pi.base.exists() else "not built"))
            if running:
                print(pi.target_args())
            elif args.command == "args":
                return 1
    except PiError as exc:
        print(f"emulated_pi: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
