"""A real slow capacity pool: a loop-mounted ext4 file system whose device is throttled with
the cgroup v1 blkio controller (as an HDD pool would be slow). Needs root, losetup, mkfs.ext4
and /sys/fs/cgroup/blkio; ``SlowPool.create`` returns (None, reason) where it cannot."""
from __future__ import annotations

import os
import subprocess

BLKIO = "/sys/fs/cgroup/blkio"


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


class SlowPool:
    def __init__(self, image: str, mountpoint: str, device: str, majmin: str):
        self.image, self.mountpoint, self.device, self.majmin = image, mountpoint, device, majmin

    @classmethod
    def create(cls, base: str, *, size_mib: int = 256, write_bps: int = 30_000_000):
        if os.geteuid() != 0:
            return None, "needs root (losetup, mount, blkio throttling)"
        if not os.path.exists(os.path.join(BLKIO, "blkio.throttle.write_bps_device")):
            return None, "no cgroup v1 blkio throttling on this machine"
        image, mnt = os.path.join(base, "pool.img"), os.path.join(base, "slowpool")
        os.makedirs(mnt, exist_ok=True)
        device = None
        try:
            with open(image, "wb") as f:
                f.truncate(size_mib << 20)
            _run("mkfs.ext4", "-q", "-F", image)
            device = _run("losetup", "-f", "--show", image)
            _run("mount", device, mnt)
            st = os.stat(device)
            majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            pool = cls(image, mnt, device, majmin)
            pool._throttle(write_bps)
            return pool, ""
        except (OSError, subprocess.CalledProcessError) as e:
            if device:
                subprocess.run(["umount", mnt], capture_output=True)
                subprocess.run(["losetup", "-d", device], capture_output=True)
            detail = getattr(e, "stderr", "") or str(e)
            return None, f"cannot set up a loop-mounted, throttled ext4 here: {detail.strip()}"

    def _throttle(self, write_bps: int) -> None:
        with open(os.path.join(BLKIO, "blkio.throttle.write_bps_device"), "w") as f:
            f.write(f"{self.majmin} {write_bps}")

    def destroy(self) -> None:
        try:
            self._throttle(0)  # 0 removes the rule
        except OSError:
            pass
        subprocess.run(["umount", self.mountpoint], capture_output=True)
        subprocess.run(["losetup", "-d", self.device], capture_output=True)
        try:
            os.unlink(self.image)
        except OSError:
            pass
