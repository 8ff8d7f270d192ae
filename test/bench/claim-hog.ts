// Child process of the claim-check bench: keeps one CPU busy the way the gateways' fan-out does (megabytes
// written to and read from loopback TCP sockets), with nothing of Warren or of the broker involved. Small
// events timed while it runs on the edge tier show what a busy edge CPU alone costs the broker tier's path.
import { createServer, connect, type Socket } from 'node:net';

const CHUNK = Buffer.alloc(1024 * 1024, 0x61);

const server = createServer((socket) => socket.resume());
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  const writer: Socket = connect(port, '127.0.0.1', () => {
    const pump = (): void => {
      while (writer.write(CHUNK));
    };
    writer.on('drain', pump);
    pump();
    process.send?.({ op: 'busy' });
  });
});
// The bench is gone (ended or killed), or done with it: so is the load.
process.on('disconnect', () => process.exit(0));
