/**
 * Baseline of the MQTT bench (bench/mqtt.ts): a bare mqtt.js client that resumes its persistent
 * session and acknowledges each message on receipt (the library's default), parsing each as JSON,
 * until it has `records`; then it disconnects and prints the done line with the CPU seconds
 * (user + system) the process used. What a Node user writes
 * without sluice, and what loses the messages in flight when it dies.
 */
import mqtt from "mqtt";
import { DONE_PREFIX } from "./broker-protocol.js";

/** What one run must do; JSON in argv[2]. */
interface MqttTask {
  readonly url: string;
  readonly clientId: string;
  readonly records: number;
  readonly receiveMaximum: number;
}

const task = JSON.parse(process.argv[2] ?? "{}") as MqttTask;
let count = 0;
const client = mqtt.connect(task.url, {
  protocolVersion: 5,
  clientId: task.clientId,
  clean: false,
  reconnectPeriod: 0,
  properties: { sessionExpiryInterval: 3600, receiveMaximum: task.receiveMaximum },
});
client.on("error", (err) => {
  // Mosquitto may reset the socket right after the DISCONNECT: nothing is lost then.
  if (count === task.records) return;
  console.error(err.message);
  process.exit(1);
});
client.on("message", (_topic, payload) => {
  if (typeof JSON.parse(payload.toString()) === "object") count++;
  // After this turn: mqtt.js sends the PUBACK once the `message` listeners have returned.
  if (count === task.records) setImmediate(() => client.end(false, {}, () => finished()));
});

/** The done line: records, then CPU seconds. */
function finished(): void {
  const cpu = process.cpuUsage();
  process.stdout.write(`${DONE_PREFIX}${count} cpu ${((cpu.user + cpu.system) / 1e6).toFixed(3)}\n`);
}
