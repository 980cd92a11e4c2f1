// An independent SMSC for smsgw's interoperability test (tests/integration/test_interop.py):
// the npm package `smpp` (0.5.1) as a server, with none of our code involved.
//
// Usage: node smsc_server.js [port]   (port 0 or absent: an ephemeral port)
// Prints one JSON line per fact on stdout, the first being {"listening": PORT}; then
// {"bind": ...}, {"submit_sm": ...}, {"deliver_sm_resp": ...}, {"unbind": ...}.
// Accepts bind_transceiver / bind_transmitter / bind_receiver with any credentials, answers
// enquire_link and unbind, answers submit_sm with a hex message id and, when registered_delivery
// asks for it, sends a delivery receipt deliver_sm (esm_class 0x04, Appendix B text,
// receipted_message_id and message_state TLVs) 50 ms later. Exits on SIGTERM / SIGINT.
'use strict';

const smpp = require('smpp');

const port = parseInt(process.argv[2] || '0', 10);
let nextId = 0x5A000;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function smppDate(d) {
  const p = (n) => String(n).padStart(2, '0');
  return p(d.getFullYear() % 100) + p(d.getMonth() + 1) + p(d.getDate()) + p(d.getHours()) + p(d.getMinutes());
}

const server = smpp.createServer((session) => {
  session.on('error', (e) => emit({ error: String(e) }));

  for (const kind of ['bind_transceiver', 'bind_transmitter', 'bind_receiver']) {
    session.on(kind, (pdu) => {
      emit({ bind: kind, system_id: pdu.system_id });
      session.send(pdu.response({ system_id: 'node-smsc' }));
    });
  }

  session.on('enquire_link', (pdu) => session.send(pdu.response()));

  session.on('unbind', (pdu) => {
    emit({ unbind: true });
    session.send(pdu.response());
    session.close();
  });

  session.on('submit_sm', (pdu) => {
    const id = (nextId++).toString(16).toUpperCase();
    emit({ submit_sm: id, destination_addr: pdu.destination_addr, registered_delivery: pdu.registered_delivery });
    session.send(pdu.response({ message_id: id }));
    if ((pdu.registered_delivery & 0x03) === 0) {
      return;
    }
    const submitted = new Date();
    setTimeout(() => {
      const date = smppDate(new Date());
      const text = `id:${id} sub:001 dlvrd:001 submit date:${smppDate(submitted)} done date:${date} stat:DELIVRD err:000 text:`;
      session.deliver_sm({
        source_addr_ton: pdu.dest_addr_ton,
        source_addr_npi: pdu.dest_addr_npi,
        source_addr: pdu.destination_addr,
        dest_addr_ton: pdu.source_addr_ton,
        dest_addr_npi: pdu.source_addr_npi,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        short_message: Buffer.from(text, 'ascii'),
        receipted_message_id: id,
        message_state: 2,
      }, (resp) => emit({ deliver_sm_resp: id, command_status: resp.command_status }));
    }, 50);
  });
});

server.listen(port, '127.0.0.1', () => emit({ listening: server.address().port }));

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
