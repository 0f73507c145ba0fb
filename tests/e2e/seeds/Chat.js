// The first seed app's Vue component (/work/shared/seeds/000_d9c2e4c4e039219e.txt,
// "Chat"), its <script> part verbatim. vue-chat.html renders its template.
export default {
  data() {
    return {
      ws: null,
      messages: [],
      newMessage: ""
    };
  },
  methods: {
    sendMessage() {
      if (this.newMessage.trim()) {
        this.ws.send(this.newMessage);
        this.newMessage = "";
      }
    },
    async initializeMessages () {
      try {
        const response = await fetch("http://127.0.0.1:8000/messages", {
          method: "GET",
          headers: {
            'Accept': 'application/json'
          }
        });
        if (!response.ok) {
          throw new Error(response.error);
        }
        const data = await response.json();
        // Remove messages after timeout returned from server
        data.messages.forEach(msg => {
          const timestamp = msg.timestamp;
          // 1000 = Tranform to milliseconds and 60000 = 60 seconds
          const timeout = 60000 - (Number.parseFloat(Date.now()) - timestamp * 1000);
          console.log(timeout);
          if (timeout > 0) {
            this.messages.push(msg.message);
            setTimeout(() => {
              const index = this.messages.indexOf(msg.message);
              if (index > -1) {
                this.messages.splice(index, 1);
              }
            }, timeout);
          }
        });
      } catch (error) {
        console.error(error);
      }
    }
  },
  mounted() {
    this.ws = new WebSocket("ws://localhost:8000/ws");
    this.ws.onerror = (error) => {
      console.error("WebSocket error:", error);
    };
    this.ws.onmessage = (event) => {
      this.messages.push(event.data);
      setTimeout(() => {
        this.messages.shift();
      }, 60000); // 60 seconds
    }
    this.initializeMessages();
  },
  beforeUnmount() {
    this.ws.close();
  }
};
