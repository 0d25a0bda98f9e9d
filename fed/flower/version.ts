// The one flwr version whose Fleet API this node speaks (pinned in flower/requirements.txt).
// A SuperLink of another major.minor release is refused with one clear error: the Fleet wire
// format has changed between minor releases (see flower/PROTOCOL.md).

export const FLWR_VERSION = "1.42.0";

export class FlowerVersionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlowerVersionError";
  }
}

/** Accepts a SuperLink version of the same major.minor as FLWR_VERSION, else throws. */
export function checkSuperLinkVersion(version: string, superlink: string): void {
  const [major, minor] = FLWR_VERSION.split(".");
  const m = /^(\d+)\.(\d+)\./.exec(version);
  if (!m || m[1] !== major || m[2] !== minor) {
    throw new FlowerVersionError(
      `the SuperLink at ${superlink} runs flwr ${version || "(unknown version)"}; this node ` +
        `speaks the Fleet API of flwr ${FLWR_VERSION} (supported: flwr ${major}.${minor}.x). ` +
        `Run a flwr ${major}.${minor} SuperLink (scripts/setup_flower.sh installs ${FLWR_VERSION}).`,
    );
  }
}
