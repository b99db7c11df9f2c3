// pm2 process file for tensorswarm: one app per role. A real host runs only its own role(s):
//   pm2 start scripts/deploy/pm2/ecosystem.config.js --only ts-orchestrator
//   pm2 start scripts/deploy/pm2/ecosystem.config.js --only ts-meta-miner-miner1,ts-meta-miner-miner2
//   pm2 start scripts/deploy/pm2/ecosystem.config.js --only ts-validator
//   pm2 save && pm2 startup          # restart them at boot
// Edit the settings below (each can also come from the environment when you run `pm2 start`;
// the values are fixed at start time and kept by `pm2 save`). See scripts/deploy/README.md.
//
// Stopping: pm2 sends SIGINT, then SIGKILL after kill_timeout. Every role handles SIGINT like
// SIGTERM. A meta-miner stops its own miner (its child, in a separate process group), leaves the
// orchestrator and exits 0, so treekill is off: pm2 signals the meta-miner only, and
// kill_timeout gives it time to finish.
'use strict';

const os = require('os');
const path = require('path');

const env = process.env;

// ---- settings ---------------------------------------------------------------------------
// The checkout, with its virtualenv (.venv) created by `bash scripts/test.sh` or by hand.
const ROOT = env.TENSORSWARM_ROOT || '/opt/tensorswarm';
// Per-app state (orchestrator DB, meta-miner work dirs, validator scores) and SDK caches.
const STATE = env.TENSORSWARM_STATE || path.join(os.homedir(), '.tensorswarm');
// Chain: finney | test | ws://HOST:PORT or wss://HOST:PORT (your own subtensor node).
const NETWORK = env.NETWORK || 'test';
// Your subnet's netuid (this value is a placeholder).
const NETUID = env.NETUID || '1';
const WALLET_PATH = env.WALLET_PATH || path.join(os.homedir(), '.bittensor', 'wallets');
// The orchestrator's HTTP API and the TCPStore address it gives to miners (its public IP or
// DNS name: the orchestrator itself must be able to connect to it too).
const ORCHESTRATOR_URL = env.ORCHESTRATOR_URL || 'http://203.0.113.10:8600';
const TCP_STORE_HOST = env.TCP_STORE_HOST || '203.0.113.10';
// This miner host's public IP, published on chain as the axon address (not 0.0.0.0 or 127.0.0.1).
const EXTERNAL_IP = env.EXTERNAL_IP || '203.0.113.20';
// Port offset, only so that the whole file can be tried on one machine next to other services.
const PORT_OFFSET = Number(env.TENSORSWARM_PORT_OFFSET || 0);
// -----------------------------------------------------------------------------------------

const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');

function chainArgs(wallet, hotkey) {
  return [
    '--subtensor.network', NETWORK, '--netuid', String(NETUID),
    '--wallet.path', WALLET_PATH, '--wallet.name', wallet, '--wallet.hotkey', hotkey,
  ];
}

// Keep the bittensor SDK's caches (chain metadata, token symbols) per app, out of $HOME.
function appEnv(name, extra) {
  const cache = path.join(STATE, name, 'cache');
  return Object.assign({
    PYTHONUNBUFFERED: '1',
    BITTENSOR_RUNTIME_CACHE_DIR: path.join(cache, 'runtime-cache'),
    BTCLI_TOKEN_SYMBOLS_CACHE: path.join(cache, 'btcli_token_symbols.json'),
    BTCLI_SUBNET_NAMES_CACHE: path.join(cache, 'btcli_subnet_names.json'),
    BTCLI_MULTISIG_CACHE: path.join(cache, 'btcli_multisig_cache.json'),
  }, extra || {});
}

const common = {
  cwd: ROOT,
  autorestart: true,
  // Restart after 2 s, then x1.5 per crash up to pm2's cap of 15 s (reset after 30 s up).
  exp_backoff_restart_delay: 2000,
  // Exit status 2 is a bad flag or value: restarting cannot fix it.
  stop_exit_codes: [2],
  treekill: false,
};

function metaMiner(wallet, hotkey, axonPort, extra) {
  const name = `ts-meta-miner-${wallet}`;
  return Object.assign({}, common, {
    name,
    script: path.join(ROOT, 'neurons', 'meta_miner.py'),
    interpreter: PYTHON,
    args: chainArgs(wallet, hotkey).concat([
      '--orchestrator-url', ORCHESTRATOR_URL,
      '--axon.ip', '0.0.0.0', '--axon.port', String(axonPort + PORT_OFFSET),
      '--axon.external_ip', EXTERNAL_IP,
      '--work-dir', path.join(STATE, name),
      '--device', 'cpu', '--timeout', '60',
    ]),
    // Normally done in ~15 s (miner: 10 s grace + 5 s after SIGKILL); if the orchestrator is
    // unreachable, the heartbeat and leave retries can take longer. Past this, pm2 SIGKILLs the
    // meta-miner only (treekill off), and its miner could be left running: keep it generous.
    kill_timeout: 240000,
    // gloo/nccl interface on a VPN or multi-homed host; the miner inherits the environment:
    //   GLOO_SOCKET_IFNAME: 'wg0',
    env: appEnv(name, extra),
  });
}

module.exports = {
  apps: [
    Object.assign({}, common, {
      name: 'ts-orchestrator',
      // `python -m orchestrator` (the package uses relative imports, so it cannot be run as a
      // script file): the venv's python is the program and pm2 adds no interpreter.
      script: PYTHON,
      interpreter: 'none',
      args: ['-m', 'orchestrator'].concat(chainArgs('owner', 'default'), [
        '--host', '0.0.0.0', '--port', String(8600 + PORT_OFFSET),
        '--tcp-store-host', TCP_STORE_HOST, '--tcp-store-port', String(29500 + PORT_OFFSET),
        '--state-dir', path.join(STATE, 'ts-orchestrator'),
        // Training-run flags are fixed for the life of the state dir.
        '--preset', 'small', '--min-world-size', '3',
      ]),
      kill_timeout: 30000,
      env: appEnv('ts-orchestrator'),
    }),

    // Two meta-miners on one host: separate wallets, axon ports and work dirs.
    metaMiner('miner1', 'default', 8091),
    metaMiner('miner2', 'default', 8092),

    Object.assign({}, common, {
      name: 'ts-validator',
      script: path.join(ROOT, 'neurons', 'validator.py'),
      interpreter: PYTHON,
      args: chainArgs('validator', 'default').concat([
        '--orchestrator-url', ORCHESTRATOR_URL,
        '--state-dir', path.join(STATE, 'ts-validator'),
        '--host', '127.0.0.1', '--port', String(8800 + PORT_OFFSET),
        '--sample-size', '4', '--weights-interval', '60',
      ]),
      // A stop waits for the audit step in progress.
      kill_timeout: 120000,
      env: appEnv('ts-validator'),
    }),
  ],
};
