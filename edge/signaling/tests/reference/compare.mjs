// Runs one scripted tracker session against the npm bittorrent-tracker server (started here on
// 127.0.0.1, port 0) and against the tracker at the URL given, and compares what every socket
// received, message for message. Exit 0 when they match; otherwise prints both and exits 1.
//
//   node compare.mjs ws://127.0.0.1:PORT/ws/tracker?access_token=JWT [SECOND_URL]
//
// With a second URL (another edge of the same cluster), socket b talks to it and a and c to the
// first: the same replies mean the counts, offers, answers and the synthetic stop cross nodes.
//
// The sequence: three sockets, two swarms; announces with and without offers (each offer has a
// single possible receiver, so the reference's random choice does not matter), an answer, a
// completed and a stopped event, scrapes (one hash, a list with an unknown hash), invalid
// messages (ids of the wrong length, a bad event, an unknown action), a socket closing (the
// synthetic stop) and a scrape after it. The reference processes scrapes asynchronously, so
// each step waits for its replies before the next.
import Server from 'bittorrent-tracker/server'
import WebSocket from 'ws'

const target = process.argv[2]
const second = process.argv[3]
if (!target) {
  console.error('usage: node compare.mjs <ws url of the tracker under test> [<ws url of another node>]')
  process.exit(2)
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function session (url, urlOfB = url) {
  const open = (url) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    ws.got = []
    ws.on('message', m => ws.got.push(m.toString()))
    ws.on('open', () => resolve(ws))
    ws.on('error', reject)
  })
  const H1 = 'aaaaaaaaaaaaaaaaaaaa'
  const H2 = 'h2h2h2h2h2h2h2h2h2h2'
  const P1 = '11111111111111111111'
  const P2 = '22222222222222222222'
  const P3 = '\u00e9\u00ff3333333333333333\u0001\u001f'
  const offer = (id, sdp) => [{ offer: { type: 'offer', sdp }, offer_id: id }]
  const steps = []
  const a = await open(url)
  const b = await open(urlOfB)
  const c = await open(url)
  const send = async (ws, msg) => {
    ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg))
    await sleep(60)
  }
  await send(a, { numwant: 50, uploaded: 0, downloaded: 0, left: 1000, event: 'started', action: 'announce', info_hash: H1, peer_id: P1, offers: offer('o1o1o1o1o1o1o1o1o1o1', 'v=0\r\no=a') })
  await send(b, { numwant: 50, uploaded: 0, downloaded: 0, left: 1000, event: 'started', action: 'announce', info_hash: H1, peer_id: P2, offers: offer('o2o2o2o2o2o2o2o2o2o2', 'v=0\r\no=b') })
  await send(a, { action: 'announce', info_hash: H1, peer_id: P1, to_peer_id: P2, answer: { type: 'answer', sdp: 'v=0\r\no=a-answer' }, offer_id: 'o2o2o2o2o2o2o2o2o2o2' })
  await send(c, { numwant: 50, uploaded: 0, downloaded: 0, left: 0, event: 'started', action: 'announce', info_hash: H2, peer_id: P3 })
  await send(b, { numwant: 50, uploaded: 10, downloaded: 1000, left: 0, event: 'completed', action: 'announce', info_hash: H1, peer_id: P2 })
  await send(a, { numwant: 50, uploaded: 0, downloaded: 0, left: 500, action: 'announce', info_hash: H1, peer_id: P1 })
  await send(c, { action: 'scrape', info_hash: H1 })
  await send(c, { action: 'scrape', info_hash: [H2, H1, 'zzzzzzzzzzzzzzzzzzzz'] })
  await send(c, { action: 'announce', info_hash: 'short', peer_id: P3 })
  await send(c, { action: 'announce', info_hash: H2, peer_id: 'short' })
  await send(c, { action: 'announce', info_hash: H2, peer_id: P3, answer: { type: 'answer' } })
  await send(c, { action: 'announce', info_hash: H2, peer_id: P3, event: 'bogus' })
  await send(c, { action: 'nope' })
  await send(c, { action: 'scrape', info_hash: ['short'] })
  await send(b, { numwant: 50, uploaded: 10, downloaded: 1000, left: 0, event: 'stopped', action: 'announce', info_hash: H1, peer_id: P2 })
  a.close()
  await sleep(150)
  await send(c, { action: 'scrape', info_hash: [H1, H2] })
  steps.push({ a: a.got, b: b.got, c: c.got })
  b.close()
  c.close()
  return steps[0]
}

const server = new Server({ udp: false, http: false, ws: true, stats: false })
server.on('warning', () => {})
server.on('error', e => { console.error('reference server error', e); process.exit(2) })
await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
const reference = await session(`ws://127.0.0.1:${server.ws.address().port}`)
server.close()
const edge = await session(target, second)

const same = JSON.stringify(reference) === JSON.stringify(edge)
console.log(JSON.stringify({ same, messages: Object.values(reference).flat().length, reference, edge }, null, 1))
process.exit(same ? 0 : 1)
