//! `/echo` against tungstenite (a client we did not write), plus raw frames
//! for what tungstenite will not send: every message size boundary,
//! fragmentation, ping/pong, and the close handshake in both directions.

mod common;

use std::time::Duration;

use common::*;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode as TOp};
use tungstenite::protocol::frame::Frame as TFrame;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;
use wisp::protocol::OpCode;

const MAX: &str = "2097152";

fn echo_server() -> Server {
    Server::start(&["--max-message-bytes", MAX])
}

/// The text of `len` bytes, with multi-byte characters where they fit.
fn text_of(len: usize) -> String {
    let mut s = String::with_capacity(len);
    let mut i = 0usize;
    while s.len() < len {
        let c = if len - s.len() >= 3 && i % 7 == 3 {
            '€'
        } else {
            (b'a' + (i % 26) as u8) as char
        };
        s.push(c);
        i += 1;
    }
    s
}

const SIZES: [usize; 10] = [0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20, 2097152];

#[test]
fn text_round_trips_at_every_length_boundary() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    for len in SIZES {
        let text = text_of(len);
        assert_eq!(text.len(), len);
        ws.send(Message::Text(text.clone())).unwrap();
        match ws_read(&mut ws) {
            Message::Text(got) => assert!(got == text, "text of {len} bytes differs"),
            m => panic!("{len}: expected text, got {:?}", m.len()),
        }
    }
    ws.close(None).unwrap();
}

#[test]
fn binary_round_trips_at_every_length_boundary() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    for len in SIZES {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        ws.send(Message::Binary(data.clone())).unwrap();
        match ws_read(&mut ws) {
            Message::Binary(got) => assert!(got == data, "binary of {len} bytes differs"),
            m => panic!("{len}: expected binary, got {m:?}"),
        }
    }
}

#[test]
fn many_messages_in_one_write_are_echoed_in_order() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    for i in 0..500 {
        ws.write(Message::Text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..500 {
        assert_eq!(ws_read(&mut ws), Message::Text(format!("m{i}")));
    }
}

#[test]
fn fragmented_text_with_interleaved_ping_via_tungstenite_frames() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    let euro = "€".as_bytes();
    // "Hel" | ping | "lo " + first byte of € | rest of € + " wörld"
    let mut second = b"lo ".to_vec();
    second.push(euro[0]);
    let mut third = euro[1..].to_vec();
    third.extend_from_slice(" wörld".as_bytes());
    ws.send(Message::Frame(TFrame::message(
        b"Hel".to_vec(),
        TOp::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.send(Message::Ping(b"mid".to_vec())).unwrap();
    ws.send(Message::Frame(TFrame::message(
        second,
        TOp::Data(Data::Continue),
        false,
    )))
    .unwrap();
    ws.send(Message::Frame(TFrame::message(
        third,
        TOp::Data(Data::Continue),
        true,
    )))
    .unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"mid".to_vec()));
    assert_eq!(ws.read().unwrap(), Message::Text("Hello € wörld".into()));
}

#[test]
fn fragmented_binary_of_many_small_frames_via_raw_socket() {
    let server = echo_server();
    let mut raw = RawWs::connect(&server, "/echo");
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
    let mut wire = Vec::new();
    for (i, chunk) in data.chunks(3).enumerate() {
        let op = if i == 0 { 0x2 } else { 0x0 };
        let fin = if (i + 1) * 3 >= data.len() { 0x80 } else { 0 };
        wire.extend(masked(fin | op, chunk));
        if i % 100 == 50 {
            wire.extend(masked(0x89, b"hb"));
        }
    }
    // Dribble the bytes in odd-sized writes so frames split across reads.
    for piece in wire.chunks(997) {
        raw.send_raw(piece);
    }
    let mut pongs = 0;
    loop {
        match raw.recv().expect("echo") {
            Frame::Pong(p) => {
                assert_eq!(p, b"hb");
                pongs += 1;
            }
            Frame::Binary(b) => {
                assert!(b == data, "reassembled binary differs");
                break;
            }
            f => panic!("unexpected {f:?}"),
        }
    }
    assert_eq!(
        pongs, 10,
        "every interleaved ping is answered before the message"
    );
}

#[test]
fn ping_is_answered_with_the_same_payload() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    for payload in [Vec::new(), b"hello".to_vec(), vec![0xAB; 125]] {
        ws.send(Message::Ping(payload.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Pong(payload));
    }
    // Raw: a ping right behind a text message in the same write.
    let mut raw = RawWs::connect(&server, "/echo");
    let mut wire = masked(0x81, b"first");
    wire.extend(masked(0x89, &[0, 1, 2, 255]));
    raw.send_raw(&wire);
    assert_eq!(raw.recv(), Some(Frame::Text("first".into())));
    assert_eq!(raw.recv(), Some(Frame::Pong(vec![0, 1, 2, 255])));
}

#[test]
fn unsolicited_pong_is_ignored() {
    let server = echo_server();
    let mut raw = RawWs::connect(&server, "/echo");
    raw.send(OpCode::Pong, b"nobody asked");
    raw.send_text("still here");
    assert_eq!(raw.recv(), Some(Frame::Text("still here".into())));
}

#[test]
fn client_close_is_echoed_and_the_server_ends_tcp() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected the echoed close, got {other:?}"),
    }
    ws_expect_closed(&mut ws);

    // Raw: the echoed close carries the same code, then EOF.
    let mut raw = RawWs::connect(&server, "/echo");
    raw.send(OpCode::Close, &[0x0F, 0xA0, b'x']); // 4000, an application code
    assert_eq!(raw.recv(), Some(Frame::Close(Some(4000), String::new())));
    raw.expect_eof(Duration::from_secs(3));

    // An empty close is answered (with no code or 1000) and the connection ends.
    let mut raw = RawWs::connect(&server, "/echo");
    raw.send(OpCode::Close, b"");
    match raw.recv() {
        Some(Frame::Close(None | Some(1000), _)) => {}
        other => panic!("expected a close, got {other:?}"),
    }
    raw.expect_eof(Duration::from_secs(3));
}

/// The server closes with `code`; tungstenite answers and the TCP connection ends.
fn expect_server_close(ws: &mut Ws, code: u16) {
    assert_eq!(ws_read_close(ws), code);
    ws_expect_closed(ws);
}

#[test]
fn oversize_message_is_closed_with_1009() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let mut ws = ws_connect(&server, "/echo");
    ws.send(Message::Binary(vec![1; 1000])).unwrap();
    assert_eq!(ws_read(&mut ws), Message::Binary(vec![1; 1000]));
    ws.send(Message::Binary(vec![1; 1001])).unwrap();
    expect_server_close(&mut ws, 1009);

    // Over the limit only after reassembly.
    let mut ws = ws_connect(&server, "/echo");
    ws.send(Message::Frame(TFrame::message(
        vec![b'a'; 600],
        TOp::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.send(Message::Frame(TFrame::message(
        vec![b'a'; 600],
        TOp::Data(Data::Continue),
        true,
    )))
    .unwrap();
    expect_server_close(&mut ws, 1009);

    // A header announcing a huge frame is refused without the payload.
    let mut raw = RawWs::connect(&server, "/echo");
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.send_raw(&header);
    assert_eq!(raw.recv_close(), Some(1009));
    raw.expect_eof(Duration::from_secs(3));
}

#[test]
fn bad_utf8_is_closed_with_1007() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    ws.send(Message::Frame(TFrame::message(
        b"ok\xc0\xaf".to_vec(),
        TOp::Data(Data::Text),
        true,
    )))
    .unwrap();
    expect_server_close(&mut ws, 1007);

    // Fragmented, invalid only in the second fragment.
    let mut ws = ws_connect(&server, "/echo");
    ws.send(Message::Frame(TFrame::message(
        b"fine".to_vec(),
        TOp::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.send(Message::Frame(TFrame::message(
        b"\xed\xa0\x80".to_vec(),
        TOp::Data(Data::Continue),
        true,
    )))
    .unwrap();
    expect_server_close(&mut ws, 1007);

    // Fails fast: the first bytes of a large text frame are already invalid.
    let mut raw = RawWs::connect(&server, "/echo");
    let frame = masked(0x81, &[b"\xff".as_slice(), &[b'x'; 100_000]].concat());
    raw.send_raw(&frame[..64]);
    assert_eq!(raw.recv_close(), Some(1007));
    raw.expect_eof(Duration::from_secs(3));
}

#[test]
fn reserved_opcode_is_closed_with_1002() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    ws.send(Message::Frame(TFrame::message(
        b"x".to_vec(),
        TOp::Data(Data::Reserved(3)),
        true,
    )))
    .unwrap();
    expect_server_close(&mut ws, 1002);

    for b0 in [
        0x8B, 0x8F, 0x87, 0xC1, /* RSV1 */
        0x09, /* fragmented ping */
    ] {
        let mut raw = RawWs::connect(&server, "/echo");
        raw.send_raw(&masked(b0, b"x"));
        assert_eq!(raw.recv_close(), Some(1002), "first byte {b0:#x}");
        raw.expect_eof(Duration::from_secs(3));
    }
}

#[test]
fn unmasked_frame_is_closed_with_1002() {
    let server = echo_server();
    let mut raw = RawWs::connect(&server, "/echo");
    raw.send_raw(&raw_frame(0x81, b"naked", None));
    assert_eq!(raw.recv_close(), Some(1002));
    raw.expect_eof(Duration::from_secs(3));
}

#[test]
fn bad_close_frames_are_refused() {
    let server = echo_server();
    for (payload, code) in [
        (&b"\x03"[..], 1002),    // one-byte close payload
        (b"\x03\xed", 1002),     // 1005 must not be sent
        (b"\x03\xe7", 1002),     // 999
        (b"\x03\xe8\xff", 1007), // reason not UTF-8
        (&[0x03, 0xE8], 0),      // 1000: fine, echoed
    ] {
        let mut raw = RawWs::connect(&server, "/echo");
        raw.send(OpCode::Close, payload);
        let got = raw.recv_close();
        if code == 0 {
            assert_eq!(got, Some(1000));
        } else {
            assert_eq!(got, Some(code), "close payload {payload:?}");
        }
        raw.expect_eof(Duration::from_secs(3));
    }
    // A control frame over 125 bytes.
    let mut raw = RawWs::connect(&server, "/echo");
    raw.send_raw(&masked(0x89, &[0; 126]));
    assert_eq!(raw.recv_close(), Some(1002));
    raw.expect_eof(Duration::from_secs(3));
}

#[test]
fn binary_on_chat_endpoints_is_closed_with_1003() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/ws");
    ws.send(Message::Binary(vec![1, 2, 3])).unwrap();
    expect_server_close(&mut ws, 1003);

    let mut ws = ws_connect(&server, "/ws/lobby/alice");
    assert_eq!(read_event(&mut ws)["type"], "welcome");
    ws.send(Message::Binary(vec![1, 2, 3])).unwrap();
    expect_server_close(&mut ws, 1003);
}

#[test]
fn server_close_then_fin_even_if_the_peer_never_answers() {
    // The raw peer never sends its close: the server must still end TCP (its
    // FIN comes right after the close frame; the drop within 5 s).
    let server = echo_server();
    let mut raw = RawWs::connect(&server, "/echo");
    raw.send_raw(&raw_frame(0x81, b"naked", None));
    assert_eq!(raw.recv_close(), Some(1002));
    raw.expect_eof(Duration::from_secs(2));
    // The socket is fully gone from the server within the close timeout.
    assert!(
        wait_until(Duration::from_secs(7), || server.healthz()["connections"]
            == 0),
        "connection still counted: {}",
        server.healthz()
    );
}

#[test]
fn echo_counts_in_metrics() {
    let server = echo_server();
    let mut ws = ws_connect(&server, "/echo");
    ws.send(Message::Text("x".into())).unwrap();
    ws_read(&mut ws);
    assert!(server.metric("wisp_messages_received_total") >= 1.0);
    assert!(server.metric("wisp_bytes_received_total") >= 7.0);
    assert!(server.metric("wisp_bytes_sent_total") >= 3.0);
    assert_eq!(server.healthz()["connections"], 1);
}

#[test]
fn global_channel_broadcasts_to_every_client_including_the_sender() {
    let server = echo_server();
    let mut a = ws_connect(&server, "/ws");
    let mut b = ws_connect(&server, "/ws");
    a.send(Message::Text("hello all".into())).unwrap();
    assert_eq!(ws_read(&mut a), Message::Text("hello all".into()));
    assert_eq!(ws_read(&mut b), Message::Text("hello all".into()));
    let big = text_of(60_000);
    b.send(Message::Text(big.clone())).unwrap();
    assert!(ws_read(&mut a) == Message::Text(big.clone()));
    assert!(ws_read(&mut b) == Message::Text(big));
    let stored = server.get("/messages").json();
    assert_eq!(stored["messages"][0]["message"], "hello all");
}
