import Server from 'bittorrent-tracker/server'
const server = new Server({ udp: false, http: false, ws: true, stats: false })
server.on('warning', () => {})
server.on('error', () => {})
server.listen(0, '127.0.0.1', () => console.log(`port ${server.ws.address().port}`))
